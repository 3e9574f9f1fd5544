// JupyterLab's styleModule: the run view (shared with the notebook widget) and the sidebar.
import './base.css';
import './sidebar.css';

import { describe, expect, it } from 'vitest';
import { parseAgentText } from '../src/agenttext';

describe('agent text', () => {
  it('splits paragraphs from fenced code blocks', () => {
    const text = 'Here is the code:\n```python\nprint(2 + 2)\n```\nIt prints 4.';
    expect(parseAgentText(text)).toEqual([
      { kind: 'text', text: 'Here is the code:' },
      { kind: 'code', lang: 'python', code: 'print(2 + 2)' },
      { kind: 'text', text: 'It prints 4.' }
    ]);
  });

  it('keeps markup as characters, and runs an unclosed fence to the end', () => {
    expect(parseAgentText('<img src=x onerror=alert(1)> **bold**')).toEqual([
      { kind: 'text', text: '<img src=x onerror=alert(1)> **bold**' }]);
    expect(parseAgentText('run:\n~~~\nls\n```\nstill code')).toEqual([
      { kind: 'text', text: 'run:' }, { kind: 'code', lang: '', code: 'ls\n```\nstill code' }]);
  });
});

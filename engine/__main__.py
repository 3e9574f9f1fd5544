"""``python -m engine schema`` prints the JSON Schema of every event; ``python -m engine demo``
runs a small workflow in the terminal, printing its event stream."""

import sys

from .demo import main as demo
from .events import main as schema


def main(argv: list[str]) -> int:
    if argv[:1] == ["schema"]:
        return schema(argv)
    if argv[:1] == ["demo"]:
        return demo(argv[1:])
    print("usage: python -m engine schema | python -m engine demo [--store URL]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

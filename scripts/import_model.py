"""Convert a CTranslate2 (faster-whisper) Whisper folder to an openai-whisper .pt file.

Usage: python scripts/import_model.py CT2_FOLDER OUTPUT.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    """Run the conversion; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="CTranslate2 folder (model.bin, config.json)")
    parser.add_argument("output", type=Path, help="openai-whisper checkpoint to write (.pt)")
    args = parser.parse_args(argv)
    # Imported here, after making the checkout importable: `app` need not be installed.
    sys.path.insert(0, str(REPO_ROOT))
    from app.worker.ctranslate2_import import CTranslate2ImportError, convert_to_file

    try:
        dims = convert_to_file(args.folder, args.output)
    except CTranslate2ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, value in dims.items():
        print(f"{name} = {value}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

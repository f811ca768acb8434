"""`fvlm profile` with a reference variant bound onto the model it builds (benchmarks/reference_variants.py).

    python benchmarks/profile_variant.py full_coarse_pass train --preset tiny -b 8 -T 8 -S 64 --out r.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import reference_variants

    from fvlm_cli import profile
    from fvlm_cli.cli import main as cli_main

    variant = sys.argv[1]
    build = profile._build
    profile._build = lambda *a, **k: reference_variants.apply(build(*a, **k), variant)
    sys.argv = ["fvlm", "profile", *sys.argv[2:]]
    cli_main()


if __name__ == "__main__":
    main()

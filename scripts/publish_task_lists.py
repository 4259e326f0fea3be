"""Write the task lists the env families publish (``make proto``), so the trainer can check a
config's task names without importing the benchmark: ``services/protocol/miniwob_tasks.txt``."""

from __future__ import annotations

from pathlib import Path

from services.env.families.miniwob import MiniWoBFamily

TARGET = Path(__file__).resolve().parents[1] / "services" / "protocol" / "miniwob_tasks.txt"


def main() -> None:
    TARGET.write_text("".join(f"{task}\n" for task in MiniWoBFamily().tasks()))
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()

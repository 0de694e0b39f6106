"""python train.py ... is `bmca-train ...` run from a checkout (bmca_clip/scripts/train.py)."""

from bmca_clip.scripts.train import main

if __name__ == "__main__":
    main()

"""python eval.py ... is `bmca-eval ...` run from a checkout (bmca_clip/scripts/evaluate.py)."""

from bmca_clip.scripts.evaluate import main

if __name__ == "__main__":
    main()

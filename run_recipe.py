"""A recipe of pretrainings, K-fold runs and their ensemble: `python run_recipe.py configs/recipes/cpu-2h.yaml`."""
import sys

from pipeline.recipe import recipe_main

if __name__ == "__main__":
    sys.exit(recipe_main())

"""One file per family (or group of families sharing a recipe): the tiny recipes `recipes.RECIPES` lists."""

"""Recipe tools over a bundled cookbook of 12 recipes (``data/recipes.json``): search by
text, ingredients, cuisine, diet and time; full recipes; scaling to a number of servings with
optional conversion to US customary units (factors from ``data/units.json``).
"""

from __future__ import annotations

from typing import Any

from ttpa_ray.tools.impl._common import load, norm, req_choice, req_int, req_list, req_str
from ttpa_ray.tools.impl._schema import array, enum, integer, spec, string

CUISINES = ["any", "american", "chinese", "greek", "indian", "italian", "japanese", "mexican", "middle_eastern",
            "turkish"]
DIETS = ["none", "vegetarian", "vegan", "gluten_free"]


def _recipe(recipe_id: Any) -> dict[str, Any]:
    text = req_str("recipe_id", recipe_id)
    for r in load("recipes.json")["recipes"]:
        if r["id"] == text.lower() or norm(r["title"]) == norm(text):
            return r
    raise ValueError(f"unknown recipe_id {text!r}; use an id returned by search_recipes, e.g. 'rcp-shakshuka'")


def _summary(r: dict[str, Any]) -> dict[str, Any]:
    return {"recipe_id": r["id"], "title": r["title"], "cuisine": r["cuisine"], "diets": list(r["diets"]),
            "total_minutes": r["total_minutes"], "servings": r["servings"],
            "calories_per_serving": r["calories_per_serving"]}


def search_recipes(query: str = "", ingredients: list[str] | None = None, cuisine: str = "any", diet: str = "none",
                   max_minutes: int | None = None, limit: int = 5) -> dict[str, Any]:
    q = norm(req_str("query", query, allow_empty=True))
    have = [norm(req_str(f"ingredients[{i}]", x))
            for i, x in enumerate(req_list("ingredients", ingredients or [], 0, 20))]
    cuisine = req_choice("cuisine", cuisine, CUISINES)
    diet = req_choice("diet", diet, DIETS)
    cap = None if max_minutes is None else req_int("max_minutes", max_minutes, 1, 1440)
    limit = req_int("limit", limit, 1, 12)
    hits = []
    for r in load("recipes.json")["recipes"]:
        names = [norm(i["name"]) for i in r["ingredients"]]
        if q and q not in norm(r["title"]) and not any(q in n for n in names):
            continue
        if (cuisine != "any" and r["cuisine"] != cuisine) or (diet != "none" and diet not in r["diets"]):
            continue
        if cap is not None and r["total_minutes"] > cap:
            continue
        matched = [h for h in have if any(h in n for n in names)]
        if have and not matched:
            continue
        hits.append((len(matched), r))
    hits.sort(key=lambda h: (-h[0], h[1]["total_minutes"], h[1]["id"]))
    return {"count": len(hits), "results": [{**_summary(r), **({"matched_ingredients": m} if have else {})}
                                            for m, r in hits[:limit]]}


def get_recipe(recipe_id: str) -> dict[str, Any]:
    r = _recipe(recipe_id)
    return {**_summary(r), "ingredients": [dict(i) for i in r["ingredients"]], "steps": list(r["steps"])}


_US = {"g": ("oz", 0.028349523125 * 1000), "ml": ("cup", 236.5882365)}  # metric unit -> (US unit, metric per US unit)


def _amount(q: float) -> float:
    return round(q, 2) if q < 10 else round(q, 1) if q < 100 else float(round(q))


def scale_recipe(recipe_id: str, servings: int, unit_system: str = "metric") -> dict[str, Any]:
    r = _recipe(recipe_id)
    servings = req_int("servings", servings, 1, 100)
    unit_system = req_choice("unit_system", unit_system, ["metric", "us"])
    factor = servings / r["servings"]
    out = []
    for ing in r["ingredients"]:
        qty, unit = ing["quantity"] * factor, ing["unit"]
        if unit_system == "us" and unit in _US:
            unit, qty = _US[unit][0], qty / _US[unit][1]
            if unit == "cup" and qty < 0.25:
                unit, qty = "tbsp", qty * 16
        out.append({"name": ing["name"], "quantity": _amount(qty), "unit": unit})
    return {"recipe_id": r["id"], "title": r["title"], "original_servings": r["servings"], "servings": servings,
            "scale_factor": round(factor, 4), "unit_system": unit_system, "ingredients": out,
            "total_calories": r["calories_per_serving"] * servings}


# --------------------------------------------------------------------------- schemas

_ID = string("Recipe id from search_recipes, e.g. 'rcp-shakshuka' (an exact title also works).")

SPECS = [
    spec("recipes", "recipes:search_recipes",
         "Search recipes by name, ingredients on hand, cuisine, diet and maximum total time.",
         {"query": string("Words in the recipe title or an ingredient, e.g. 'soup' (empty: any).", ""),
          "ingredients": array(string("Ingredient, e.g. 'eggs'."),
                               "Ingredients to use; recipes using more of them rank first."),
          "cuisine": enum(CUISINES, "Cuisine.", "any"), "diet": enum(DIETS, "Dietary requirement.", "none"),
          "max_minutes": integer("Maximum total time in minutes.", minimum=1),
          "limit": integer("Maximum number of results (1-12).", 5, minimum=1, maximum=12)},
         [],
         [{"query": "soup"}, {"ingredients": ["eggs", "tomatoes"], "max_minutes": 30},
          {"cuisine": "italian", "diet": "vegan"}],
         query="Can you suggest some recipes[ for {query}][ using {ingredients}][ ({cuisine} cuisine)]"
               "[ that are {diet}][ ready in {max_minutes} minutes or less][, at most {limit}]?"),
    spec("recipes", "recipes:get_recipe",
         "Get a full recipe: ingredients with quantities, steps, time, servings and calories.",
         {"recipe_id": _ID}, ["recipe_id"], [{"recipe_id": "rcp-chickpea-curry"}, {"recipe_id": "Guacamole"}],
         query="Can you give me the full recipe for {recipe_id}?"),
    spec("recipes", "recipes:scale_recipe",
         "Scale a recipe's ingredient quantities to a number of servings, optionally in US units (oz, cups).",
         {"recipe_id": _ID, "servings": integer("Servings wanted (1-100).", minimum=1, maximum=100),
          "unit_system": enum(["metric", "us"], "Units for weights and volumes.", "metric")},
         ["recipe_id", "servings"],
         [{"recipe_id": "rcp-pancakes", "servings": 6},
          {"recipe_id": "rcp-banana-bread", "servings": 20, "unit_system": "us"}],
         query="Adjust the recipe {recipe_id} to serve {servings}[, in {unit_system} units]."),
]

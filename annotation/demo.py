"""A demo data set: household-task trajectories (in the style of ALFWorld) with LLM step feedback.

Each trajectory mixes the steps that move toward the goal with wasted ones
(looking around, wrong receptacles). The LLM feedback marks productive steps,
and is wrong on purpose about one step in ten, so that reviewers have something
to correct. A model prediction (probability and explanation) comes with every
step. Deterministic for a given seed.
"""

import random
from collections.abc import Iterator

OBJECTS = ["apple", "mug", "potato", "tomato", "egg", "bowl", "plate", "lettuce", "knife", "cup"]
PLACES = ["countertop 1", "countertop 2", "cabinet 1", "cabinet 3", "drawer 2", "shelf 1", "diningtable 1", "stoveburner 2"]
TARGETS = {"fridge 1": "cool", "microwave 1": "heat", "sinkbasin 1": "clean"}
WASTE = ["look", "inventory", "go to drawer 4", "open drawer 4", "close drawer 4", "examine shelf 2", "go to garbagecan 1"]


def _gold(rng: random.Random, obj: str, place: str, verb: str) -> tuple[str, list[tuple[str, str, str]]]:
    """(instruction, [(action, result, why)]) for one task."""
    dest = rng.choice(PLACES[:3] + ["diningtable 1"])
    tool = {"cool": "fridge 1", "heat": "microwave 1", "clean": "sinkbasin 1"}[verb]
    instruction = f"{verb} some {obj} and put it in {dest}."
    steps = [
        (f"go to {place}", f"You arrive at {place}. On the {place}, you see a {obj} 1 and a spatula 1.", f"the {obj} is on {place}"),
        (f"take {obj} 1 from {place}", f"You pick up the {obj} 1 from the {place}.", f"picks up the {obj} the task needs"),
        (f"go to {tool}", f"You arrive at {tool}.", f"the {tool} is where one can {verb} things"),
        (f"{verb} {obj} 1 with {tool}", f"You {verb} the {obj} 1 using the {tool}.", f"{verb}s the {obj} as asked"),
        (f"go to {dest}", f"You arrive at {dest}.", "heads for the destination"),
        (f"move {obj} 1 to {dest}", f"You move the {obj} 1 to the {dest}.", "completes the task"),
    ]
    return instruction, steps


def trajectories(count: int = 60, seed: int = 7) -> Iterator[dict]:
    rng = random.Random(seed)
    for n in range(count):
        obj, place = rng.choice(OBJECTS), rng.choice(PLACES)
        verb = rng.choice(list(TARGETS.values()))
        instruction, gold = _gold(rng, obj, place, verb)
        success = rng.random() < 0.6
        if not success:
            gold = gold[: rng.randint(2, 4)]
        steps = []
        observation = f"You are in the middle of a room. Looking quickly around you, you see {', '.join(PLACES[:5])}."
        plan = [(a, r, why, True) for a, r, why in gold]
        for _ in range(rng.randint(1, 5)):
            w = rng.choice(WASTE)
            plan.insert(rng.randint(0, len(plan)), (w, "Nothing happens." if w != "look" else observation, "", False))
        for i, (action, result, why, productive) in enumerate(plan):
            llm_says = productive if rng.random() > 0.1 else not productive
            reason = why if productive else "this does not bring the player closer to the goal"
            if llm_says != productive:
                reason = "seems to explore the room usefully" if llm_says else "the player seems to waste a step"
            p = min(0.97, max(0.03, rng.gauss(0.78 if productive else 0.25, 0.15)))
            steps.append(
                {
                    "observation": observation,
                    "action": action,
                    "result": result,
                    "reward": 1.0 if (success and i == len(plan) - 1) else 0.0,
                    "feedback": {"productive": llm_says, "reason": reason, "source": "gpt-4 (LFM prompt)"},
                    "prediction": {"probability": round(p, 3), "explanation": f"action '{action}' vs. task '{instruction}'"},
                }
            )
            observation = result
        yield {
            "id": f"demo-{n + 1:03d}",
            "instruction": instruction,
            "environment": "alfworld (demo)",
            "outcome": {"success": success, "reward": 1.0 if success else 0.0},
            "steps": steps,
            "model_version": "lfm-demo-0",
        }

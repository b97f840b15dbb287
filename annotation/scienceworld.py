"""Labelled agent trajectories from ScienceWorld, in the `lfm_trajectory` kind's native format.

ScienceWorld (PyPI ``scienceworld``; a Scala simulator driven over py4j, so it needs Java) has 30
task types, each with many variations, and every variation comes with a gold action sequence that
solves it. A trajectory here is that gold sequence with wrong actions inserted at random places
(seeded): before a gold action, with probability ``wrong_rate``, one wrong action (sometimes two in
a row) is drawn from the environment's own list of valid actions in the current state and actually
executed, so its result and everything after it are what the simulator answered.

Labels come from the environment's score (0 to 100; the reward of a step is its change):

- the score went up: productive (reason ``"score +N"``);
- the score went down: not productive (``"score -N"``);
- the score did not change: productive when the action is the next action of the gold sequence
  (``"score unchanged, gold action"``), not productive when it is an inserted wrong action
  (``"score unchanged, not a gold action"``).

So a gold step that only prepares the goal (open a door, walk to the kitchen, pick up the
thermometer) counts as productive, like the LFM paper's "was this helpful?", and an inserted action
never does. ("look around" in a gold sequence is productive too: it is part of the path.) For that
to hold, a wrong action is kept only when it leaves the task as solvable as before:

- The gold sequence is first played without insertions, and the score after every gold action is
  recorded (the clean run).
- A wrong action that changes the score, ends the episode, or makes the simulator ask which object
  was meant ("Ambiguous request") is refused.
- After every gold action the score must equal the clean run's. When it does not, the wrong actions
  inserted since the last gold action that raised the score (else the latest one before) are
  refused. Many tasks are experiments that run on the simulator's clock (heating, growing, sliding,
  life stages), and one extra action can move a score change to another step; so this happens.
- After a refusal the episode is reloaded and replayed with other wrong actions at the blamed places
  (``max_retries`` such replays per trajectory); after that, blamed places are dropped (and after
  twice as many more, every place from the first one blamed), so a trajectory always ends, at worst
  as the plain gold sequence.
- A few tasks are not deterministic (grow-fruit's pollinators, the genetics tasks): the plain gold
  sequence itself scores differently when replayed. For those only the end is checked (solved, full
  score); ``meta["deterministic"]`` is then False.

Every trajectory therefore ends solved with the full score (unless cut by ``max_steps``, or a
non-deterministic task failed even without insertions in every try: then ``outcome.success`` is
False), each gold action has the effect it had in the clean run, and no inserted action changed the
score. Where the clock matters, few insertions survive, so those tasks give mostly productive steps.

Wrong actions never include ``focus on …`` (focusing on the wrong object ends the episode with a
negative score), ``reset task``, ``wait``/``wait1`` (ten or one extra ticks of the clock; they were
refused almost every time), an action of the task's own gold sequence, or an action string the
environment lists more than once (it would ask which object was meant). One is drawn by picking an
action template first (open, move … to …, connect … to …, look at, …), uniformly, then an action of
that template, so the thousands of ``connect`` combinations do not crowd out the rest. Nothing is
inserted between an ambiguous gold action and the number that answers it.

Each step is ``{observation, action, result, reward, feedback}``: the observation is what the agent
saw before acting (the previous step's result; for the first step the opening ``look around``), the
result is the simulator's answer, the reward the score change. The label is both the step's
``feedback`` (``source: "scienceworld score"``) and ``meta["labels"]`` (one bool per step, with
``meta["score_deltas"]``, ``meta["on_gold"]`` and ``meta["scores"]``), so a benchmark can use it as
ground truth even after the feedback has been replaced. Admissible actions are not stored: the list
has hundreds to thousands of entries in every state.

One `ScienceWorldGenerator` owns one simulator process (a JVM); keep it for the whole run (starting
one, and loading every task once so that the simulator's lazily seeded objects do not depend on the
order of work, costs about 8 s). `generate_trajectories(config, workers=N)` spreads tasks over N
processes. Every random choice comes from a `random.Random` seeded by (seed, task, variation,
index). The simulator itself is not reproducible between runs: it seeds its random generator per
variation, but picks some objects (which thing to focus on, which door to take) in the order of
unordered collections, and its clock-driven processes vary, so two runs with the same settings can
differ. Keep the generated file: it is the reproducible artefact, and its `meta` holds the ground
truth.
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

ENVIRONMENT = "scienceworld"
SOURCE = "scienceworld score"
SPLITS = ("train", "dev", "test", "all")

REASON_GOLD = "score unchanged, gold action"
REASON_WRONG = "score unchanged, not a gold action"

#: Actions never used as wrong actions (see the module docstring).
EXCLUDED_PREFIXES = ("focus on", "reset task", "wait")


class ScienceWorldUnavailable(RuntimeError):
    """The scienceworld package or Java is missing."""


def unavailable_reason() -> str | None:
    """Why trajectories cannot be generated here, or None when they can."""
    try:
        import scienceworld  # noqa: F401
    except ImportError:
        return "the scienceworld package is not installed (pip install scienceworld)"
    if shutil.which("java") is None:
        return "java is not on PATH (ScienceWorld runs on a JVM; install a JRE, 11 or newer)"
    return None


def scienceworld_version() -> str:
    from scienceworld.version import __version__

    return __version__


def label_step(score_delta: int, on_gold: bool) -> tuple[bool, str]:
    """The label of one step from the score change and whether the action was the next gold action."""
    if score_delta > 0:
        return True, f"score +{score_delta}"
    if score_delta < 0:
        return False, f"score {score_delta}"
    return (True, REASON_GOLD) if on_gold else (False, REASON_WRONG)


@dataclass
class GenerationConfig:
    per_task: int = 2
    seed: int = 0
    tasks: Sequence[str] | None = None  # None: all 30
    split: str = "train"  # which variations to draw from
    max_steps: int | None = None  # cut trajectories at this many steps
    wrong_rate: float = 0.4  # probability of inserting wrong action(s) before a gold action
    double_rate: float = 0.3  # given an insertion, probability that it is two wrong actions
    max_retries: int = 3  # replays with other wrong actions, per trajectory
    simplifications: str = ""  # comma separated, as ScienceWorld takes them ("easy" for all)

    def __post_init__(self):
        if self.per_task < 1:
            raise ValueError("per_task must be at least 1")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        if not 0.0 <= self.wrong_rate <= 1.0 or not 0.0 <= self.double_rate <= 1.0:
            raise ValueError("wrong_rate and double_rate must be in [0, 1]")


@dataclass
class GenerationStats:
    trajectories: int = 0
    steps: int = 0
    productive: int = 0
    wrong_actions: int = 0
    successes: int = 0
    retries: int = 0
    dropped_insertions: int = 0
    env_actions: int = 0  # every action sent to the simulator, replays included
    seconds: float = 0.0
    per_task: dict[str, int] = field(default_factory=dict)

    def add(self, traj: dict, seconds: float) -> None:
        meta = traj["meta"]
        self.trajectories += 1
        self.steps += len(traj["steps"])
        self.productive += sum(meta["labels"])
        self.wrong_actions += meta["wrong_actions"]
        self.successes += bool(traj["outcome"]["success"])
        self.retries += meta["retries"]
        self.dropped_insertions += meta["dropped_insertions"]
        self.seconds += seconds
        self.per_task[meta["task"]] = self.per_task.get(meta["task"], 0) + 1


class _Restart(Exception):
    """Replay the episode: args = (insertion keys to blame, whether the break showed only later)."""


class _Episode:
    """The gold sequence with wrong actions inserted, played (and replayed) in the simulator."""

    def __init__(self, gen: "ScienceWorldGenerator", gold, clean_scores, insert_at, rng):
        self.gen = gen
        self.gold = gold
        self.gold_set = set(gold)
        self.clean_scores = clean_scores
        self.scoring = {g for g in range(len(gold)) if clean_scores[g] > (clean_scores[g - 1] if g else 0)}
        self.insert_at = insert_at
        self.plan = dict(insert_at)
        self.rng = rng
        self.chosen: dict[tuple[int, int], str] = {}
        self.refused: dict[tuple[int, int], set[str]] = {}
        self.candidates: dict[tuple[str, ...], dict[int, list[str]]] = {}
        self.retries = 0
        self.dropped = 0
        # Strict: the score after each gold action must be the clean run's. A few tasks are not
        # deterministic (pollination in grow-fruit): when the plain gold sequence itself scores
        # differently, only the end is checked (solved, full score).
        self.strict = True

    def drop(self, g: int) -> None:
        if self.insert_at.pop(g, None) is not None:
            self.dropped += 1
        for k in [k for k in self.chosen if k[0] == g]:
            del self.chosen[k]

    def _record(self, action: str, result: str, new_score: int, gold_step: bool) -> None:
        self.steps.append({"observation": self.observation, "action": action, "result": result,
                           "reward": float(new_score - self.score)})
        self.deltas.append(new_score - self.score)
        self.scores.append(new_score)
        self.on_gold.append(gold_step)
        self.observation, self.score = result, new_score

    def _draw(self, key: tuple[int, int], prefix: tuple[str, ...]) -> str | None:
        if prefix not in self.candidates:  # the state after the same actions is the same state
            self.candidates[prefix] = self.gen._wrong_candidates(self.gold_set)
        refused = self.refused.get(key, set())
        pool = {t: [a for a in acts if a not in refused] for t, acts in self.candidates[prefix].items()}
        pool = {t: acts for t, acts in pool.items() if acts}
        if not pool:
            return None
        template = self.rng.choice(sorted(pool))
        return self.rng.choice(pool[template])

    def _refuse(self, keys, later: bool):
        for k in keys:
            self.refused.setdefault(k, set()).add(self.chosen.pop(k))
        return _Restart(keys, later)

    def play(self) -> None:
        self.observation = self.gen._reset()
        self.steps: list[dict] = []
        self.scores: list[int] = []
        self.on_gold: list[bool] = []
        self.deltas: list[int] = []
        self.score = 0
        self.done = False
        prefix: tuple[str, ...] = ()
        last_scoring = -1
        for g, action in enumerate(self.gold):
            for j in range(self.insert_at.get(g, 0)):
                key = (g, j)
                if key not in self.chosen:
                    drawn = self._draw(key, prefix)
                    if drawn is None:  # nothing left to insert here
                        self.insert_at[g] = j
                        break
                    self.chosen[key] = drawn
                wrong = self.chosen[key]
                result, new_score, done = self.gen._act(wrong)
                prefix += (wrong,)
                if new_score != self.score or done or result.startswith("Ambiguous request"):
                    raise self._refuse([key], False)
                self._record(wrong, result, new_score, False)
            result, new_score, self.done = self.gen._act(action)
            prefix += (action,)
            self._record(action, result, new_score, True)
            if self.strict and new_score != self.clean_scores[g]:
                # The ones inserted since the last gold action that scored; else the latest one before.
                suspects = [k for k in self.chosen if last_scoring < k[0] <= g] or sorted(
                    k for k in self.chosen if k[0] <= g
                )[-1:]
                if suspects:
                    raise self._refuse(suspects, True)
                # Nothing inserted so far, yet another score: the task is not deterministic.
                self.strict = False
                self.insert_at.clear()
                self.insert_at.update(self.plan)
                self.dropped = 0
                raise _Restart([], False)
            if g in self.scoring:
                last_scoring = g
            if self.done:
                break
        if not self.strict and not (self.done and self.score >= 100):
            if self.chosen:
                raise self._refuse(list(self.chosen), True)
            raise _Restart([], True)  # the plain gold sequence failed this time: it may not next time


class ScienceWorldGenerator:
    """One simulator process; `trajectories(config)` yields native trajectory dicts."""

    def __init__(self, env_step_limit: int = 100_000):
        reason = unavailable_reason()
        if reason:
            raise ScienceWorldUnavailable(reason)
        from scienceworld import ScienceWorldEnv

        for name in ("scienceworld", "py4j"):  # one INFO line per load and per gateway otherwise
            logging.getLogger(name).setLevel(logging.WARNING)
        self.env = ScienceWorldEnv("", envStepLimit=env_step_limit)
        # Some simulator objects draw from its global random generator once, when first used, so the
        # gold path of a variation depended on which tasks this process had loaded before. Loading
        # every task once, in a fixed order, first makes it independent of that (about 4 s).
        for name in self.env.get_task_names():
            self.env.load(name, 0, "", generateGoldPath=False)
        self.version = scienceworld_version()
        self.env_actions = 0
        self.seconds = {"load": 0.0, "reset": 0.0, "act": 0.0, "valid": 0.0}  # where the time went
        self._loaded: tuple[str, int, str] | None = None
        self._current: tuple[str, int, str] = ("", 0, "")

    def close(self) -> None:
        env, self.env = self.env, None
        if env is not None:
            env.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- the simulator ---------------------------------------------------------------

    def variations(self, task: str, split: str) -> list[int]:
        self.env.load(task, 0, "", generateGoldPath=False)
        self._loaded = None
        if split == "all":
            return list(range(self.env.get_max_variations(task)))
        get = {"train": self.env.get_variations_train, "dev": self.env.get_variations_dev,
               "test": self.env.get_variations_test}[split]
        return sorted(int(v) for v in get())

    def _load(self, task: str, variation: int, simplifications: str) -> None:
        key = (task, variation, simplifications)
        if self._loaded != key:
            started = time.perf_counter()
            self.env.load(task, variation, simplifications, generateGoldPath=True)
            self.seconds["load"] += time.perf_counter() - started
            self._loaded = key
        self._current = key

    # The wrapper's step() also lists every valid action (about 0.1-0.5 s); these go to the server only.
    def _reset(self) -> str:
        """Back to the start of the loaded variation. The simulator's own reset reloads the task and
        plans its gold path again (seconds; close to a minute for the genetics tasks); loading it
        without the gold path gives the same start state in a fraction of a second."""
        started = time.perf_counter()
        task, variation, simplifications = self._current
        self.env.load(task, variation, simplifications, generateGoldPath=False)
        self.seconds["reset"] += time.perf_counter() - started
        return self._act("look around")[0]

    def _act(self, action: str) -> tuple[str, int, bool]:
        server = self.env.server
        started = time.perf_counter()
        observation = server.step(action)
        self.seconds["act"] += time.perf_counter() - started
        self.env_actions += 1
        return str(observation), int(round(100 * server.getScore())), bool(server.getCompleted())

    def _wrong_candidates(self, gold_set: set[str]) -> dict[int, list[str]]:
        """Valid actions in the current state that may be inserted, by template id."""
        started = time.perf_counter()
        listed = self.env.get_valid_action_object_combinations_with_templates()
        self.seconds["valid"] += time.perf_counter() - started
        counts: dict[str, int] = {}
        for entry in listed:
            counts[entry["action"]] = counts.get(entry["action"], 0) + 1
        by_template: dict[int, set[str]] = {}
        for entry in listed:
            a = entry["action"]
            if counts[a] > 1 or a in gold_set or a.startswith(EXCLUDED_PREFIXES) or not a.strip():
                continue
            by_template.setdefault(int(entry["template_id"]), set()).add(a)
        return {t: sorted(v) for t, v in sorted(by_template.items())}

    # --- one trajectory ------------------------------------------------------------

    def generate(self, task: str, variation: int, config: GenerationConfig, index: int = 0) -> dict:
        """One labelled trajectory for a task variation (see the module docstring)."""
        rng = random.Random(f"scienceworld:{config.seed}:{task}:{variation}:{index}")
        self._load(task, variation, config.simplifications)
        self._loaded = None  # playing changes the state: the next generate must load again
        instruction = str(self.env.get_task_description())
        gold = [str(a) for a in self.env.get_gold_action_sequence()]
        if not gold or gold[0].startswith("ERROR"):
            raise RuntimeError(f"{task} variation {variation}: no gold action sequence")

        # The clean run: the score after every gold action, from the same start state as every replay.
        self._reset()
        clean_scores = []
        for a in gold:
            _, score, done = self._act(a)
            clean_scores.append(score)
            if done:
                break
        gold = gold[: len(clean_scores)]

        # Where wrong actions go: before gold action g, never before the number answering an ambiguity.
        insert_at: dict[int, int] = {}
        for g in range(len(gold)):
            if gold[g].strip().isdigit():
                continue
            if rng.random() < config.wrong_rate:
                insert_at[g] = 2 if rng.random() < config.double_rate else 1

        episode = _Episode(self, gold, clean_scores, insert_at, rng)
        budget = config.max_retries
        extra = 2 * config.max_retries
        plain_failures = 0
        while True:
            try:
                episode.play()
                break
            except _Restart as restart:
                keys, later = restart.args
                episode.retries += 1
                if not keys:
                    if later:  # the plain gold sequence of a non-deterministic task failed
                        plain_failures += 1
                        if plain_failures > config.max_retries:
                            break  # keep this run: a failed trajectory
                        continue
                    # now known not to be deterministic: start over with the plan and the budget
                    budget, extra = config.max_retries, 2 * config.max_retries
                    continue
                if budget > 0:  # the refused actions are redrawn in the replay
                    budget -= 1
                    continue
                # Out of redraws: the places blamed on go (each replay drops at least one, so this
                # ends, at worst with the plain gold sequence); after `extra` more, every place from the
                # first one blamed on.
                extra -= 1
                first = min(k[0] for k in keys)
                for g in [g for g in insert_at if (g >= first if extra < 0 else any(k[0] == g for k in keys))]:
                    episode.drop(g)

        steps, deltas, scores, on_gold = episode.steps, episode.deltas, episode.scores, episode.on_gold
        done = episode.done
        if config.max_steps is not None and len(steps) > config.max_steps:
            n = config.max_steps
            steps, deltas, scores, on_gold = steps[:n], deltas[:n], scores[:n], on_gold[:n]
            done = False
        labels, reasons = zip(*(label_step(d, og) for d, og in zip(deltas, on_gold)))
        for step, productive, reason in zip(steps, labels, reasons):
            step["feedback"] = {"productive": productive, "reason": reason, "source": SOURCE}
        final = scores[-1] if scores else 0
        return {
            "id": f"sw-{task}-v{variation}-s{config.seed}-{index}",
            "instruction": instruction,
            "environment": ENVIRONMENT,
            "outcome": {"success": bool(done and final >= 100), "reward": float(final)},
            "steps": steps,
            "meta": {
                "task": task,
                "variation": variation,
                "split": config.split,
                "seed": config.seed,
                "index": index,
                "simplifications": config.simplifications,
                "gold_length": len(gold),
                "wrong_actions": sum(1 for og in on_gold if not og),
                "retries": episode.retries,
                "dropped_insertions": episode.dropped,
                "deterministic": episode.strict,
                "labels": list(labels),
                "score_deltas": deltas,
                "scores": scores,
                "on_gold": on_gold,
                "label_source": SOURCE,
                "generator": f"scienceworld {self.version}",
            },
        }

    # --- many -----------------------------------------------------------------------

    def task_trajectories(self, task: str, config: GenerationConfig) -> Iterator[tuple[dict, float, int]]:
        """(trajectory, seconds, simulator actions) for `config.per_task` variations of one task, each
        variation drawn once while there are enough."""
        variations = self.variations(task, config.split)
        rng = random.Random(f"scienceworld-variations:{config.seed}:{task}")
        picks = rng.sample(variations, min(config.per_task, len(variations)))
        while len(picks) < config.per_task:
            picks.append(rng.choice(variations))
        seen: dict[int, int] = {}
        for variation in picks:
            index = seen.get(variation, 0)
            seen[variation] = index + 1
            started = time.monotonic()
            actions_before = self.env_actions
            traj = self.generate(task, variation, config, index)
            yield traj, time.monotonic() - started, self.env_actions - actions_before

    def trajectories(self, config: GenerationConfig, stats: GenerationStats | None = None) -> Iterator[dict]:
        """The trajectories of every task of `config`, task after task."""
        for task in resolve_tasks(config.tasks):
            for traj, seconds, actions in self.task_trajectories(task, config):
                if stats is not None:
                    stats.add(traj, seconds)
                    stats.env_actions += actions
                yield traj


def task_names() -> list[str]:
    """The 30 task names of the installed ScienceWorld, in its order."""
    from scienceworld.constants import ID2TASK

    return list(ID2TASK.values())


def resolve_tasks(tasks: Sequence[str] | None) -> list[str]:
    names = task_names()
    if not tasks:
        return names
    unknown = [t for t in tasks if t not in names]
    if unknown:
        raise ValueError(f"unknown task(s): {', '.join(unknown)}; known: {', '.join(names)}")
    return list(tasks)


_WORKER: ScienceWorldGenerator | None = None


def _worker_task(args: tuple[str, GenerationConfig]) -> list[tuple[dict, float, int]]:
    global _WORKER
    if _WORKER is None:
        _WORKER = ScienceWorldGenerator()
    task, config = args
    return list(_WORKER.task_trajectories(task, config))


def generate_trajectories(
    config: GenerationConfig, *, workers: int = 1, stats: GenerationStats | None = None
) -> Iterator[dict]:
    """Every trajectory of `config`, in task order. With workers > 1, tasks are spread over that
    many processes (one simulator each); the output is the same as with one."""
    tasks = resolve_tasks(config.tasks)
    reason = unavailable_reason()
    if reason:
        raise ScienceWorldUnavailable(reason)
    if workers <= 1:
        with ScienceWorldGenerator() as gen:
            yield from gen.trajectories(config, stats)
        return
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(min(workers, len(tasks))) as pool:
        for batch in pool.imap(_worker_task, [(t, config) for t in tasks]):
            for traj, seconds, actions in batch:
                if stats is not None:
                    stats.add(traj, seconds)
                    stats.env_actions += actions
                yield traj


def summary(stats: GenerationStats, wall_seconds: float | None = None) -> str:
    """One line about a run; `wall_seconds` is the elapsed time (with workers, less than the sum)."""
    seconds = stats.seconds if wall_seconds is None else wall_seconds
    rate = stats.steps / seconds if seconds else 0.0
    share = stats.productive / stats.steps if stats.steps else 0.0
    return (
        f"{stats.trajectories} trajectories, {stats.steps} steps ({share:.1%} productive, "
        f"{stats.wrong_actions} wrong actions inserted), {stats.successes} solved, "
        f"{stats.retries} replays, {stats.dropped_insertions} insertion places dropped, "
        f"{stats.env_actions} simulator actions; {seconds:.1f} s ({rate:.1f} steps/s)"
    )


def trajectory_labels(traj: dict[str, Any]) -> list[bool]:
    """The ground-truth labels of a generated trajectory (meta["labels"], else the steps' feedback)."""
    labels = (traj.get("meta") or {}).get("labels")
    if labels is not None:
        return [bool(x) for x in labels]
    return [bool(s["feedback"]["productive"]) for s in traj["steps"]]

"""The command-line flags every command shares, defined once so they mean the same everywhere.

Each ``add_*`` function adds one group of flags to an ``argparse`` parser. A command that
selects mentions, builds candidate sets or opens the agent's checkpoint file takes these
groups instead of spelling its own flags, so that:

* ``--candidates N|all`` is always λ, the number of candidates per mention (default 10;
  ``all`` = the whole KB), parsed by one function (:func:`parse_candidates`);
* ``--qids Q1,Q2,...`` is always an explicit candidate list, validated as Wikidata QIDs;
* ``--seeds 0,1,2`` is always the candidate-sampling seeds of a command that runs several;
  a command that runs one pass takes ``--seed N`` (and ``--seed N`` given to a ``--seeds``
  command still works: argparse reads it as the unambiguous prefix of ``--seeds``);
* ``--split`` defaults to ``test`` everywhere (``all`` = every mention), except where a
  command states otherwise for a reason (training reads ``train``);
* ``--presets-file FILE`` is always the custom attack presets file;
* ``--checkpoint-db PATH`` is always the agent's SQLite checkpoint file.

This module sits in ``kb/``, the lowest layer, so every layer above may use it: it imports
only the standard library and ``kb`` modules.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kb.records import QID_PATTERN
from kb.runcore.selection import DEFAULT_SPLIT

DEFAULT_CANDIDATES = 10
ALL_CANDIDATES = ("all", "full")


def parse_candidates(text: str) -> int | None:
    """λ from the command line: a positive int, or ``all`` (``full``) for the whole KB (None).

    One parser for every command, so ``--candidates all`` and ``--candidates 10`` give the same
    value to ``eval.run``, ``attacks.generate`` and ``agent.link`` (and their candidate sets and
    output folders agree)."""
    value = str(text).strip()
    if value.lower() in ALL_CANDIDATES:
        return None
    try:
        size = int(value)
    except ValueError:
        hint = "; an explicit list of QIDs is --qids" if value[:1] in ("Q", "q") else ""
        raise argparse.ArgumentTypeError(
            f"expected a number of candidates per mention or 'all', got {text!r}{hint}"
        ) from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"needs at least 1 candidate per mention, got {size}")
    return size


def parse_seeds(text: str) -> tuple[int, ...]:
    """Comma-separated candidate-sampling seeds (``0,1,2``), in the order given, repeats dropped."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            seed = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integer seeds, got {part!r}"
            ) from None
        if seed not in seeds:
            seeds.append(seed)
    if not seeds:
        raise argparse.ArgumentTypeError(f"expected at least one seed, got {text!r}")
    return tuple(seeds)


def parse_qids(text: str) -> tuple[str, ...]:
    """A comma-separated list of Wikidata QIDs (``Q146,Q144``), in order, repeats dropped.

    Each must look like ``Q<digits>`` (no leading zero), so a typo fails on the command line
    rather than as an unknown entity deep in a run."""
    qids: list[str] = []
    for part in str(text).split(","):
        qid = part.strip()
        if not qid:
            continue
        if not QID_PATTERN.match(qid):
            raise argparse.ArgumentTypeError(f"{qid!r} is not a Wikidata QID (expected e.g. Q146)")
        if qid not in qids:
            qids.append(qid)
    if not qids:
        raise argparse.ArgumentTypeError(f"expected comma-separated QIDs such as Q146,Q144, got {text!r}")
    return tuple(qids)


def add_dataset_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    split_default: str = DEFAULT_SPLIT,
    dataset_default: str | None = None,
    dataset_required: bool | None = None,
    with_images: bool = True,
    limit_default: int | None = None,
    limit_help: str = "first N mentions of the split",
) -> None:
    """Which mentions a command reads: ``--dataset``, ``--data-dir``, ``--split``, ``--limit``,
    and ``--with-images`` (unless ``with_images=False``, for a command that only ever reads
    pictured mentions).

    ``--split`` defaults to ``test`` (``split_default`` overrides it where a command has a
    reason, e.g. training); ``all`` selects every mention. ``--dataset`` is required unless
    ``dataset_default`` is given or ``dataset_required=False``."""
    from kb.dataset import dataset_names

    if dataset_required is None:
        dataset_required = dataset_default is None
    default_note = f" (default {dataset_default})" if dataset_default else ""
    parser.add_argument(
        "--dataset",
        required=dataset_required,
        default=dataset_default,
        help=f"one of {', '.join(dataset_names())}{default_note}",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="dataset folder (default: under $MEL_DATA_ROOT or ../shared/data/mel/)",
    )
    parser.add_argument(
        "--split",
        default=split_default,
        help=f"split name, or 'all' for every mention (default {split_default})",
    )
    shown = "all" if limit_default is None else limit_default
    parser.add_argument("--limit", type=int, default=limit_default, help=f"{limit_help} (default: {shown})")
    if with_images:
        parser.add_argument("--with-images", action="store_true", help="only mentions whose image is on disk")


def add_candidate_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    qids: bool = False,
    seeds: bool = True,
    default: int | None = DEFAULT_CANDIDATES,
) -> None:
    """How candidate sets are made: ``--candidates N|all`` (λ per mention, default 10) and
    the sampling seeds, plus ``--qids Q1,Q2,...`` where a command takes an explicit list.

    ``seeds=True`` adds ``--seeds 0,1,2`` (``args.seeds``: a tuple) for a command that repeats
    over seeds; ``seeds=False`` adds ``--seed N`` (``args.seed``: an int, default 0) for one
    that makes one pass. ``qids=True`` adds ``--qids`` (``args.qids``: a tuple, or None)."""
    shown = "all" if default is None else default
    parser.add_argument(
        "--candidates",
        type=parse_candidates,
        default=default,
        metavar="N|all",
        help=f"λ: candidates per mention, gold included, or 'all' for the whole KB (default {shown})",
    )
    if qids:
        parser.add_argument(
            "--qids",
            type=parse_qids,
            default=None,
            metavar="Q1,Q2,...",
            help="an explicit candidate list of Wikidata QIDs, comma-separated",
        )
    if seeds:
        parser.add_argument(
            "--seeds",
            type=parse_seeds,
            default=(0,),
            metavar="S1,S2,...",
            help="comma-separated candidate-sampling seeds (default 0)",
        )
    else:
        parser.add_argument("--seed", type=int, default=0, help="candidate-sampling seed (default 0)")


def add_presets_file_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--presets-file FILE``: a JSON/TOML file of custom attack presets, added to Table 1's."""
    parser.add_argument(
        "--presets-file",
        default=None,
        metavar="FILE",
        help="JSON/TOML file of custom attack presets (besides pgd-n ... cw-s)",
    )


def add_checkpoint_db_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, default: object = None
) -> None:
    """``--checkpoint-db PATH``: the agent's LangGraph SQLite checkpoint file (default
    ``$MEL_AGENT_DB``, else one in the cache). ``default`` lets a subcommand parser pass
    ``argparse.SUPPRESS`` so the value given before the subcommand survives."""
    parser.add_argument(
        "--checkpoint-db",
        type=Path,
        default=default,
        metavar="PATH",
        help="the agent's SQLite checkpoint file (default $MEL_AGENT_DB, else in the cache)",
    )


def add_quiet_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--quiet``: no progress bar (results are printed and written all the same)."""
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


LLM_FLAGS = (
    "llm_base_url",
    "llm_model",
    "llm_api_key",
    "temperature",
    "skip_judge_margin",
    "wiki",
    "consult",
    "consult_margin",
    "consult_calls",
)
"""The ``argparse`` destinations of ``add_llm_arguments`` (``AgentSettings.from_flags`` reads them)."""


def add_llm_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The agent's LLM and routing as flags, for every command that runs the agent: an unset flag
    keeps the environment's value (``MEL_LLM_*``, ``MEL_AGENT_*``, ``MEL_WIKI_MODE``) or the default."""
    parser.add_argument("--llm-base-url", default=None, help="OpenAI-compatible endpoint (default: embedded)")
    parser.add_argument("--llm-model", default=None, help="model name at that endpoint")
    parser.add_argument("--llm-api-key", default=None, help="API key for that endpoint")
    parser.add_argument(
        "--temperature", type=float, default=None, help="judge temperature (default 0; paper: 0.75)"
    )
    parser.add_argument(
        "--skip-judge-margin", type=float, default=None, help="skip the judge above this margin"
    )
    parser.add_argument("--wiki", choices=("offline", "online"), default=None, help="wiki backend")
    parser.add_argument(
        "--consult",
        action="store_true",
        default=None,
        help="let uncertain decisions call the look-up tools before the judge (agent.consult)",
    )
    parser.add_argument(
        "--consult-margin",
        type=float,
        default=None,
        help="consult below this pre-ranker margin (default agent.settings.CONSULT_MARGIN, 0.0: "
        "chosen on WikiMEL photos with the embedded judge, where look-ups changed no decision)",
    )
    parser.add_argument(
        "--consult-calls", type=int, default=None, help="at most this many tool calls (default 3)"
    )

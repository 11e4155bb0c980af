"""Family templates: how a Hugging Face causal LM over codec tokens spells speech and lays out a prompt.

A template is a small YAML file (shipped ones in ``specbench/targets/families/``; a user passes a path
for another family). Fields:

- ``codec``: the codec kind that decodes the family's speech tokens (``xcodec2``, ``snac``, ``dac``, ...);
  ``speech_vocab``: how many speech tokens there are (checked against the codec);
- ``speech_token``: the token string of speech code ``i``, with ``{}`` replaced by
  ``i + speech_token_offset``; the ids of codes ``0..V-1`` must be contiguous in the tokenizer;
- ``end_of_speech``: the token the model emits after the last speech token (EOS in speech space);
- the prompt: with ``chat: true`` the tokenizer's chat template renders a ``user`` message and the
  ``assistant`` prefix (continued, not closed); otherwise ``layout`` is the whole prompt. Placeholders:
  ``{text}`` (what to say), ``{prompt_text}`` (the speaker prompt's transcript) and ``{prompt_speech}``
  (the prompt's codec tokens, inserted as ids, never through the text tokenizer);
- ``frame``: tokens per codec frame (Orpheus writes 7 per SNAC frame): prompts must hold whole frames;
- ``licence``: the licence of the real weights (shown by ``specbench list``, README).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from specbench.errors import ConfigError

FAMILY_DIR = Path(__file__).parent / "families"
PLACEHOLDERS = ("{text}", "{prompt_text}", "{prompt_speech}")


class FamilyTemplate(BaseModel):
    """One model family's token layout (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    codec: str
    speech_vocab: int = Field(gt=0)
    speech_token: str
    speech_token_offset: int = Field(default=0, ge=0)
    end_of_speech: str
    chat: bool = False
    user: str | None = None
    assistant: str | None = None
    layout: str | None = None
    frame: int = Field(default=1, ge=1)
    licence: str = ""

    @model_validator(mode="after")
    def _layout(self) -> FamilyTemplate:
        if "{}" not in self.speech_token:
            raise ValueError("speech_token must contain {} (where the code number goes), e.g. '<|s_{}|>'")
        if self.chat:
            if self.user is None or self.assistant is None or self.layout is not None:
                raise ValueError("chat: true needs user and assistant (and no layout)")
            parts = self.user + self.assistant
            if "{prompt_speech}" not in self.assistant or not self.assistant.rstrip().endswith("{prompt_speech}"):
                raise ValueError("the assistant prefix must end with {prompt_speech} (generation continues right after the prompt's speech)")
        else:
            if self.layout is None or self.user is not None or self.assistant is not None:
                raise ValueError("chat: false needs layout (and no user/assistant)")
            parts = self.layout
        for ph in ("{text}", "{prompt_speech}"):
            if parts.count(ph) != 1:
                raise ValueError(f"the prompt must contain {ph} exactly once")
        return self

    def token_string(self, code: int) -> str:
        """The tokenizer string of speech code ``code``."""
        return self.speech_token.replace("{}", str(code + self.speech_token_offset))


def shipped_families() -> list[str]:
    """Names of the family templates shipped with specbench."""
    return sorted(p.stem for p in FAMILY_DIR.glob("*.yaml"))


def load_family(spec: str) -> FamilyTemplate:
    """A shipped family by name (``llasa``, ``orpheus``) or a template YAML file by path."""
    path = FAMILY_DIR / f"{spec}.yaml" if spec in shipped_families() else Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"unknown model family '{spec}': use one of {', '.join(shipped_families())} or the path of a family YAML (see docs/architecture.md)")
    try:
        data = yaml.safe_load(path.read_text())
        return FamilyTemplate.model_validate(data)
    except yaml.YAMLError as exc:
        raise ConfigError(f"family file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "template"
        raise ConfigError(f"family file {path}: {where}: {err['msg']}") from None

"""graphpeft: parameter-efficient fine-tuning as a torch.fx graph-rewriting pass.

    model = graphpeft.apply(hf_model, "lora")          # rule name, rule file, Rule objects
    model.save_pretrained("out/")                        # PEFT-compatible adapter + manifest
    model = graphpeft.load(hf_model, "out/")             # graphpeft or plain PEFT directory

The package follows the pipeline, and imports only go down it:
tools | integrations -> runtime -> generation | io -> rewrite -> rules -> tracing -> errors | version.
"""

from .errors import GraphPeftError
from .rewrite import methods  # noqa: F401  (importing it registers every built-in method)
from .rules.pattern import Pattern
from .rules.registry import register_method
from .rules.rule import Rule
from .rules.rule_set import RuleSet
from .runtime.model import GraphPeftModel
from .runtime.wrap import apply, load
from .tools.explain import explain
from .tools.viz import to_networkx
from .version import __version__

__all__ = [
    "apply",
    "load",
    "explain",
    "to_networkx",
    "GraphPeftModel",
    "Rule",
    "Pattern",
    "RuleSet",
    "GraphPeftError",
    "register_method",
    "__version__",
]

"""The organism: the embedded default model, trained here on a synthetic world with known
insertions.

Layers: :mod:`~rotelab.organism.world` (spec, text, tokenizer, ledger),
:mod:`~rotelab.organism.build` (training, cache, loading) and
:mod:`~rotelab.organism.describe` (what it memorized). The package sits above the methods (it
trains with :mod:`rotelab.train`) and below the pipelines.
"""

from rotelab.organism.build import (
    Organism,
    build_organism,
    default_organism,
    load_organism,
    organism_command,
    reference_organism,
)
from rotelab.organism.describe import describe_organism, format_description
from rotelab.organism.world import (
    COUNTS,
    PLANTED_TASKS,
    SECRET_ALPHABET,
    Kind,
    OrganismSpec,
    Phase,
    Profile,
    ProfileSettings,
    Task,
    World,
    generate_controls,
    generate_world,
    tokenize_items,
    train_tokenizer,
    write_world,
)

__all__ = [
    "COUNTS",
    "PLANTED_TASKS",
    "SECRET_ALPHABET",
    "Kind",
    "Organism",
    "OrganismSpec",
    "Phase",
    "Profile",
    "ProfileSettings",
    "Task",
    "World",
    "build_organism",
    "default_organism",
    "describe_organism",
    "format_description",
    "generate_controls",
    "generate_world",
    "tokenize_items",
    "load_organism",
    "organism_command",
    "reference_organism",
    "train_tokenizer",
    "write_world",
]

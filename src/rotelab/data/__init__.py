"""Corpora, token windows with provenance, and the organism's synthetic world."""

from rotelab.data.corpus import SUPPORTED_SUFFIXES, Document, read_corpus
from rotelab.data.organism import (
    COUNTS,
    Kind,
    Organism,
    OrganismSpec,
    Phase,
    Profile,
    Task,
    build_organism,
    default_organism,
    format_description,
    generate_world,
    load_organism,
    organism_command,
    write_world,
)
from rotelab.data.windows import (
    Window,
    Windows,
    check_window_shape,
    iter_windows,
    stream_chunks,
    window_offsets,
)

__all__ = [
    "COUNTS",
    "SUPPORTED_SUFFIXES",
    "Document",
    "Kind",
    "Organism",
    "OrganismSpec",
    "Phase",
    "Profile",
    "Task",
    "Window",
    "Windows",
    "build_organism",
    "check_window_shape",
    "default_organism",
    "format_description",
    "generate_world",
    "iter_windows",
    "load_organism",
    "organism_command",
    "read_corpus",
    "stream_chunks",
    "window_offsets",
    "write_world",
]

"""One module per public dataset format; importing this package registers them all."""

from kb.loaders import (  # noqa: F401
    chinese,
    demo,
    m3el,
    mimic,
    richpedia,
    wikidiverse,
    wikimel,
    wikiperson,
)

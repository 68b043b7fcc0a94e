"""The built-in ``demo`` dataset: real photographs shipped inside installed PyPI packages.

It lets the main job run on a fresh machine with no dataset download. Images are read in
place from matplotlib's sample data and scikit-image's bundled ``skimage/data`` files (no
copy, no network). Each gold QID was checked against a KB file in ``../shared/data/mel``
where that file has it (``source`` says which); the others are the Wikidata items for the
plain concept, named with the source "Wikidata". Negatives are chosen to be confusable
(other computing pioneers and astronauts, other animals, drinks, celestial bodies).
"""

from __future__ import annotations

from pathlib import Path

from kb.dataset import Dataset, DatasetSpec, register
from kb.records import Entity, Mention, find_span

NAME = "demo"
PUBLISHED_AT = "built in (images from the matplotlib and scikit-image packages)"

# qid, label, short description, where the QID was checked
DEMO_ENTITIES: tuple[tuple[str, str, str, str], ...] = (
    (
        "Q11641",
        "Grace Hopper",
        "American computer scientist and United States Navy rear admiral (1906-1992)",
        "richpedia-mel/ghmfc_qid2ne.json",
    ),
    (
        "Q7259",
        "Ada Lovelace",
        "English mathematician, writer of the first computer program (1815-1852)",
        "richpedia-mel/ghmfc_qid2ne.json",
    ),
    (
        "Q7251",
        "Alan Turing",
        "English mathematician and computer scientist (1912-1954)",
        "richpedia-mel/ghmfc_qid2ne.json",
    ),
    (
        "Q49285",
        "Sally Ride",
        "American astronaut and physicist, first American woman in space (1951-2012)",
        "richpedia-mel/ghmfc_qid2ne.json",
    ),
    (
        "Q1615",
        "Neil Armstrong",
        "American astronaut, first person to walk on the Moon (1930-2012)",
        "richpedia-mel/ghmfc_qid2ne.json",
    ),
    (
        "Q11631",
        "astronaut",
        "person trained to command, pilot or serve as a crew member of a spacecraft",
        "Wikidata",
    ),
    ("Q23548", "NASA", "space agency of the United States government", "Wikidata"),
    ("Q41291", "rocket", "vehicle propelled by a rocket engine, used for spaceflight", "Wikidata"),
    ("Q8486", "coffee", "brewed drink prepared from roasted coffee beans", "Wikidata"),
    (
        "Q6097",
        "tea",
        "aromatic beverage made by pouring hot water over cured tea leaves",
        "Wikidata",
    ),
    ("Q146", "cat", "domesticated small carnivorous mammal, the house cat", "Wikidata"),
    ("Q144", "dog", "domesticated descendant of the wolf", "Wikidata"),
    ("Q140", "lion", "large cat of the genus Panthera native to Africa and India", "Wikidata"),
    ("Q405", "Moon", "natural satellite of the Earth", "Wikidata"),
    ("Q525", "Sun", "star at the centre of the Solar System", "Wikidata"),
    ("Q111", "Mars", "fourth planet from the Sun", "Wikidata"),
    ("Q2", "Earth", "third planet from the Sun, home of humanity", "Wikidata"),
    ("Q41207", "coin", "small flat piece of metal used as money", "Wikidata"),
    (
        "Q8142",
        "currency",
        "generally accepted medium of exchange, such as banknotes and coins",
        "Wikidata",
    ),
)

# mention id, image (package, relative path), caption, mention, gold
DEMO_MENTIONS: tuple[tuple[str, tuple[str, str], str, str, str], ...] = (
    (
        "hopper-0",
        ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
        "Rear Admiral Grace Hopper in her navy uniform.",
        "Grace Hopper",
        "Q11641",
    ),
    (
        "astronaut-0",
        ("skimage", "data/astronaut.png"),
        "An astronaut poses for an official NASA portrait.",
        "astronaut",
        "Q11631",
    ),
    (
        "astronaut-1",
        ("skimage", "data/astronaut.png"),
        "An astronaut poses for an official NASA portrait.",
        "NASA",
        "Q23548",
    ),
    (
        "rocket-0",
        ("skimage", "data/rocket.jpg"),
        "A rocket lifts off from the launch pad.",
        "rocket",
        "Q41291",
    ),
    ("coffee-0", ("skimage", "data/coffee.png"), "A cup of coffee on a saucer.", "coffee", "Q8486"),
    (
        "chelsea-0",
        ("skimage", "data/chelsea.png"),
        "Chelsea the cat looks up from the floor.",
        "cat",
        "Q146",
    ),
    (
        "moon-0",
        ("skimage", "data/moon.png"),
        "The surface of the Moon seen through a telescope.",
        "Moon",
        "Q405",
    ),
    (
        "coins-0",
        ("skimage", "data/coins.png"),
        "A collection of old coins on a table.",
        "coins",
        "Q41207",
    ),
)


def package_file(package: str, relative: str) -> Path:
    """Absolute path of a data file inside an installed package."""
    module = __import__(package)
    return Path(module.__file__).resolve().parent / relative


def load(root: Path) -> Dataset:
    entities = {
        qid: Entity(qid=qid, label=label, description=description)
        for qid, label, description, _source in DEMO_ENTITIES
    }
    mentions = [
        Mention(
            id=mention_id,
            sentence=caption,
            mention=surface,
            gold=gold,
            split="test",
            image_path=package_file(*image),
            span=find_span(caption, surface),
            caption_id=mention_id.split("-")[0],
        )
        for mention_id, image, caption, surface, gold in DEMO_MENTIONS
    ]
    captions = len({m.caption_id for m in mentions})
    return Dataset(NAME, None, mentions, entities, captions=captions, splits_declared={"test": len(mentions)})


register(DatasetSpec(NAME, load, "demo", PUBLISHED_AT, needs_dir=False))

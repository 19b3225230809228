"""Giant panda facts for Panda Chat's @bamboo command.

Data with one tiny accessor. When a user types "@bamboo", the server replies
with `random_fact()` as a "* fact: <text>" line. Each fact is one plain-text
line (one or two sentences, under 200 characters, no control characters) so
it fits one protocol line and reads well in the chat window and in `nc`.

    >>> import random
    >>> from panda_facts import FACTS, random_fact
    >>> random_fact(random.Random(7)) in FACTS
    True

Pass a seeded `random.Random` to get repeatable picks (tests do); without one
the module-level `random` is used. Nothing to run or stop: `python3
panda_facts.py` only prints one fact.

Only well-established facts go here (sources such as the Smithsonian's
National Zoo, WWF and the IUCN Red List); a number that cannot be checked
does not belong in this list.
"""

from __future__ import annotations

import random
from typing import Final

FACTS: Final[tuple[str, ...]] = (
    # Diet and digestion
    "Bamboo makes up about 99% of a wild giant panda's diet.",
    "A giant panda spends 10 to 16 hours a day eating.",
    "An adult giant panda eats about 12 to 38 kg of bamboo a day.",
    "Bamboo is a grass, so the giant panda is a bear that lives almost entirely on grass.",
    "Pandas digest only a small part of the bamboo they eat, which is one reason they must eat "
    "so much of it.",
    "A panda's gut is short and simple, like a carnivore's, with no special chambers for "
    "breaking down plants.",
    "Giant panda gut bacteria look more like a carnivore's than a typical plant-eater's.",
    "Giant pandas lost a working umami taste receptor gene (Tas1r1), which may help explain "
    "why meat holds little appeal for them.",
    "Wild pandas eat many bamboo species, but in any one area they depend on just a few, such "
    "as arrow bamboo or umbrella bamboo.",
    "Pandas pick different parts of the bamboo through the year, such as tender new shoots "
    "in spring.",
    "Wild pandas occasionally eat other foods, such as small rodents or carrion.",
    "Pandas have large, flat molars and strong jaw muscles for crushing tough bamboo stems.",
    "Many bamboo species flower all at once after decades and then die back; such die-offs "
    "in the 1970s and 1980s left some pandas starving.",
    "Wild pandas drink from mountain streams and rivers.",
    # Anatomy and behaviour
    "A panda's 'thumb' is not a finger: it is an enlarged wrist bone, the radial sesamoid, "
    "that works like a thumb for gripping bamboo.",
    "Giant pandas do not hibernate: a bamboo diet cannot build up enough fat, so in winter "
    "they move to lower, warmer slopes instead.",
    "Giant pandas are good climbers, and young pandas often rest up in trees.",
    "Giant pandas can swim.",
    "Adult giant pandas mostly live alone, meeting mainly in the spring breeding season.",
    "Pandas leave scent marks on trees and rocks; a male may even do a handstand to put his "
    "scent higher up.",
    "Pandas communicate with calls such as bleats, chirps, honks, barks and growls.",
    "Adult male giant pandas are usually larger than females and can weigh more than 100 kg.",
    "A giant panda's thick, woolly coat keeps it warm in the cool, wet mountain forests "
    "where it lives.",
    "Because bamboo passes through quickly, a panda leaves many droppings a day, mostly "
    "fragments of undigested bamboo.",
    # Breeding and cubs
    "A newborn panda cub weighs only about 90 to 130 g, roughly 1/900 of its mother's weight.",
    "Panda cubs are born pink, blind and nearly hairless; their eyes open at about 6 to 8 weeks.",
    "A female giant panda is fertile for only two or three days a year, in spring.",
    "Because of delayed implantation, a panda pregnancy can last anywhere from about 95 to "
    "160 days.",
    "Giant pandas often give birth to twins, but in the wild a mother usually raises only one cub.",
    "A panda cub usually stays with its mother for about a year and a half to two years.",
    # Classification and names
    "The giant panda is a true bear: it belongs to the order Carnivora and the family Ursidae.",
    "The red panda is not a small giant panda: it belongs to its own family, Ailuridae.",
    "The giant panda's scientific name, Ailuropoda melanoleuca, means 'black and white cat-foot'.",
    "In Chinese the giant panda is called daxiongmao, which means 'giant bear cat'.",
    "Some pandas in the Qinling Mountains of Shaanxi are brown and white instead of black "
    "and white.",
    "The giant panda genome was sequenced by Chinese scientists and published in 2010.",
    # Habitat, numbers and conservation
    "Wild giant pandas live only in the mountains of western China, in Sichuan, Shaanxi and "
    "Gansu provinces.",
    "Wild pandas live in six mountain ranges: Qinling, Minshan, Qionglai, Daxiangling, "
    "Xiaoxiangling and Liangshan.",
    "Giant pandas live in cool, wet forests with bamboo undergrowth, mostly between about "
    "1,500 and 3,000 metres up.",
    "China's fourth national panda survey, completed in 2014, counted 1,864 giant pandas in "
    "the wild, not counting young cubs.",
    "In 2016 the IUCN moved the giant panda from Endangered to Vulnerable, thanks to decades "
    "of habitat protection.",
    "China formally established Giant Panda National Park in 2021; it spans parts of "
    "Sichuan, Shaanxi and Gansu.",
    "Wild giant pandas usually live about 15 to 20 years; in zoos they can live past 30.",
    "Jia Jia, a panda at Ocean Park in Hong Kong, lived to 38, the oldest giant panda on "
    "record in captivity.",
    # Pandas and people
    "After President Nixon's 1972 visit to China, the pandas Ling-Ling and Hsing-Hsing were "
    "sent to the National Zoo in Washington.",
    "Today China lends giant pandas to foreign zoos, usually for ten years at a time, rather "
    "than giving them away; cubs born abroad still belong to China.",
    "The WWF's panda logo, drawn in 1961, was inspired by Chi Chi, a giant panda at London Zoo.",
    "Su Lin, brought to Chicago's Brookfield Zoo in 1937, was the first giant panda to live "
    "in the United States.",
)


def random_fact(rng: random.Random | None = None) -> str:
    """Return one fact from FACTS, chosen with `rng` if given, else the `random` module."""
    chooser = random if rng is None else rng
    return chooser.choice(FACTS)


if __name__ == "__main__":
    print(random_fact())

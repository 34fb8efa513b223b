"""The scripted expert on crafted observations: prompts, fights, prayer, eating (no game run)."""

from __future__ import annotations

import numpy as np
import pytest

nh = pytest.importorskip("nle.nethack")

from retainrl.families.nethack import expert as ex  # noqa: E402
from retainrl.families.nethack.expert import Expert, key_index  # noqa: E402

FLOOR = nh.GLYPH_CMAP_OFF + ex.S_ROOM
STONE = nh.GLYPH_CMAP_OFF + ex.S_STONE
DOWNSTAIRS = nh.GLYPH_CMAP_OFF + ex.S_DNSTAIR


def mon_glyph(name: str) -> int:
    return nh.GLYPH_MON_OFF + next(i for i in range(nh.NUMMONS) if nh.permonst(i).mname == name)


def k(ch: str | int) -> int:
    return key_index(ord(ch) if isinstance(ch, str) else ch)


def make_obs(top: str = "", *, yn: bool = False, getlin: bool = False, more: bool = False, hp: int = 14,
             hpmax: int = 14, turn: int = 500, hunger: int = 1, monsters: dict | None = None,
             inventory: list[tuple[str, int, str]] = (), screen_lines: dict | None = None) -> dict:
    """A 5x7 lit room with the Monk at (10, 40); ``monsters`` maps (dy, dx) to a monster name."""
    glyphs = np.full((21, 79), STONE, np.int16)
    glyphs[8:13, 37:44] = FLOOR
    y, x = 10, 40
    glyphs[y, x] = mon_glyph("monk")
    for (dy, dx), name in (monsters or {}).items():
        glyphs[y + dy, x + dx] = mon_glyph(name)
    bl = np.zeros(27, np.int64)
    bl[ex.BL_X], bl[ex.BL_Y], bl[ex.BL_HP], bl[ex.BL_HPMAX] = x, y, hp, hpmax
    bl[ex.BL_DEPTH], bl[ex.BL_DLEVEL], bl[ex.BL_TIME], bl[ex.BL_HUNGER] = 1, 1, turn, hunger
    tty = np.full((24, 80), ord(" "), np.uint8)
    tty[0, : len(top)] = np.frombuffer(top.encode(), np.uint8)
    for row, line in (screen_lines or {}).items():
        tty[row, : len(line)] = np.frombuffer(line.encode(), np.uint8)
    message = np.zeros(256, np.uint8)
    message[: len(top)] = np.frombuffer(top.encode(), np.uint8)
    inv_letters = np.zeros(55, np.uint8)
    inv_classes = np.zeros(55, np.uint8)
    inv_strs = np.zeros((55, 80), np.uint8)
    for i, (letter, cls, name) in enumerate(inventory):
        inv_letters[i], inv_classes[i] = ord(letter), cls
        inv_strs[i, : len(name)] = np.frombuffer(name.encode(), np.uint8)
    return {"glyphs": glyphs, "blstats": bl, "tty_chars": tty, "message": message,
            "misc": np.array([yn, getlin, more], np.int32), "inv_letters": inv_letters,
            "inv_oclasses": inv_classes, "inv_strs": inv_strs}


def test_more_is_dismissed_in_both_forms():
    bot = Expert()
    assert bot.act(make_obs("You kill the newt!--More--")) == k(ex.ENTER)
    assert bot.act(make_obs("Welcome", more=True)) == k(ex.ENTER)
    assert bot.reason == "more"


def test_menus_and_text_lines_are_cancelled():
    bot = Expert()
    assert bot.act(make_obs("", screen_lines={3: " a - a newt corpse", 4: " (end) "})) == k(ex.ESC)
    assert bot.act(make_obs("", screen_lines={20: "(1 of 2)"})) == k(ex.ESC)
    assert bot.act(make_obs("Call a scroll labeled FOO:", getlin=True)) == k(ex.ESC)


def test_really_attack_is_declined_and_the_peaceful_is_avoided_afterwards():
    bot = Expert()
    obs = make_obs(monsters={(0, 1): "watchman"})
    assert bot.act(obs) == k("l")  # a monster alongside looks hostile until the game says otherwise
    prompt = make_obs("Really attack the watchman? [yn] (n)", yn=True, monsters={(0, 1): "watchman"})
    assert bot.act(prompt) == k(ex.ESC)
    assert mon_glyph("watchman") in bot.levels[(0, 1)].peaceful
    assert bot.act(obs) != k("l")  # it no longer fights it


def test_adjacent_hostile_is_fought_but_never_a_floating_eye():
    bot = Expert()
    assert bot.act(make_obs(monsters={(1, -1): "jackal"})) == k("b")
    assert bot.reason == "fight"
    bot = Expert()
    action = bot.act(make_obs(monsters={(0, 1): "floating eye"}))
    assert action != k("l") and bot.reason != "fight"


def test_low_hp_prays_then_quaffs_while_prayer_times_out():
    bot = Expert()
    potion = [("e", nh.POTION_CLASS, "2 uncursed potions of healing")]
    assert bot.act(make_obs(hp=2, hpmax=20, turn=1500, inventory=potion)) == k(ex.PRAY)
    assert bot.act(make_obs("Are you sure you want to pray? [yn] (n)", yn=True)) == k("y")
    # Shortly after a prayer the bot must not pray again; it drinks its healing potion instead.
    assert bot.act(make_obs(hp=2, hpmax=20, turn=1600, inventory=potion)) == k("q")
    assert bot.act(make_obs("What do you want to drink? [e or ?*]", yn=True)) == k("e")
    # Too early in the game (prayer timeout starts at 300) it does not pray either.
    assert Expert().act(make_obs(hp=2, hpmax=20, turn=50)) != k(ex.PRAY)


def test_weak_from_hunger_prays():
    assert Expert().act(make_obs(hunger=ex.WEAK, turn=2000)) == k(ex.PRAY)


def test_hungry_eats_its_food_and_answers_the_item_prompt():
    bot = Expert()
    food = [("a", nh.ARMOR_CLASS, "an uncursed +2 pair of leather gloves (being worn)"),
            ("g", nh.FOOD_CLASS, "4 uncursed food rations")]
    assert bot.act(make_obs(hunger=ex.HUNGRY, inventory=food)) == k("e")
    assert bot.act(make_obs("What do you want to eat? [g or ?*]", yn=True)) == k("g")
    # An unexpected eat prompt (not ours) is cancelled, and a floor corpse is refused.
    other = Expert()
    assert other.act(make_obs("What do you want to eat? [g or ?*]", yn=True)) == k(ex.ESC)
    assert other.act(make_obs("There is a newt corpse here; eat it? [ynq] (n)", yn=True)) == k("n")


def test_unknown_yn_questions_are_declined_and_prayer_not_confirmed_by_accident():
    bot = Expert()
    assert bot.act(make_obs("Beware, there will be no return!  Still climb? [yn] (n)", yn=True)) == k("n")
    assert bot.act(make_obs("Are you sure you want to pray? [yn] (n)", yn=True)) == k("n")


def test_walks_to_known_downstairs_and_descends_on_them():
    bot = Expert()
    obs = make_obs()
    obs["glyphs"][10, 42] = DOWNSTAIRS
    assert bot.act(obs) == k("l") and bot.reason == "to stairs"
    on_stairs = make_obs()
    on_stairs["glyphs"][10, 42] = DOWNSTAIRS
    bot.act(on_stairs)  # remembers the stairs under the player once seen
    on_stairs["glyphs"][10, 42] = on_stairs["glyphs"][10, 40]
    on_stairs["glyphs"][10, 40] = FLOOR
    on_stairs["blstats"][ex.BL_X] = 42
    assert bot.act(on_stairs) == k(">")


def test_only_safe_fresh_corpses_are_eaten():
    for corpse, answer in [("jackal", "y"), ("cockatrice", "n"), ("kobold", "n"), ("watchman", "n"),
                           ("kitten", "n"), ("kobold zombie", "n"), ("werejackal", "n")]:
        bot = Expert()
        bot.intent = ("eat_corpse",)
        q = f"There is a {corpse} corpse here; eat it? [ynq] (n)"
        assert bot.act(make_obs(q, yn=True)) == k(answer), corpse

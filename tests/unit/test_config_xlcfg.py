"""The xl.cfg syntax (xl.cfg(5) "SYNTAX", libxlu_cfg_l.l / libxlu_cfg_y.y)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenlike.tools.config import ConfigError, Settings, apply_overrides, format_value, parse_override, parse_xlcfg

# -- every construct ---------------------------------------------------------------------------


def test_every_construct_parses():
    text = (
        "# a domain\n"
        'name = "web"          # a trailing comment\n'
        "memory = 0x40; vcpus = 2\n"
        "maxmem = 0100\n"
        "nomigrate = 1\n"
        "extra = 'single \\'quoted\\' and \"double\"'\n"
        'escapes = "\\a\\b\\f\\n\\r\\t\\v\\\\\\x41\\102\\0"\n'
        'disk = [ "a,raw,xvda,rw",\n'
        "         'b,raw,xvdb,ro', ]\n"
        'nested = [ [1, 2], [], ["x", [0x10]] ]\n'
        "empty = []\n"
        'name = "web2"\n'
        'last = "no newline at the end"'
    )
    parsed = parse_xlcfg(text, "web.cfg")
    assert parsed == {
        "name": "web2",
        "memory": 64,
        "vcpus": 2,
        "maxmem": 64,
        "nomigrate": 1,
        "extra": "single 'quoted' and \"double\"",
        "escapes": "\a\b\f\n\r\t\v\\AB\0",
        "disk": ["a,raw,xvda,rw", "b,raw,xvdb,ro"],
        "nested": [[1, 2], [], ["x", [16]]],
        "empty": [],
        "last": "no newline at the end",
    }
    assert list(parsed)[0] == "name"  # a key set twice keeps its first place and its last value
    assert parsed.where("memory") == "web.cfg line 3" and parsed.where("vcpus") == "web.cfg line 3"
    assert parsed.where("name") == "web.cfg line 12"
    assert parsed.source == "web.cfg"


def test_the_man_page_separators_are_equivalent():
    newline = parse_xlcfg('name="h0"\ntype="hvm"\n')
    semicolon = parse_xlcfg('name="h0"; type="hvm"')
    assert newline == semicolon == {"name": "h0", "type": "hvm"}


def test_lists_span_lines_and_take_one_trailing_comma():
    text = 'vif = [\n  "mac=00:16:3e:00:00:01",  # first\n\n  "bridge=xenbr1"\n  ,\n  "",\n]\n'
    assert parse_xlcfg(text)["vif"] == ["mac=00:16:3e:00:00:01", "bridge=xenbr1", ""]


def test_numbers_follow_strtol_base_0():
    assert parse_xlcfg("a = 0\nb = 00\nc = 017\nd = 0x1f\ne = 0XFF\nf = 1234567890123") == {
        "a": 0, "b": 0, "c": 15, "d": 31, "e": 255, "f": 1234567890123}


def test_carriage_returns_and_blank_statements_are_harmless():
    assert parse_xlcfg('name = "a"\r\n\r\n;;\n  ; memory = 16 ;\r\n') == {"name": "a", "memory": 16}


def test_append_concatenates_lists_and_strings_as_libxlu():
    text = 'disk = ["a"]\ndisk += ["b", "c"]\nextra = "x"\nextra += " y"\nfresh += [1]\n'
    assert parse_xlcfg(text) == {"disk": ["a", "b", "c"], "extra": "x y", "fresh": [1]}


@pytest.mark.parametrize(
    "text, message",
    [
        ('memory = 1\nmemory += 2\n', "line 2 column 11: can't use += with numbers"),
        ('extra = "a"\nextra += ["b"]\n', "line 2 column 10: can't add [list] to \"string\" or vice versa"),
        ('disk = ["a"]\ndisk += "b"\n', "line 2 column 9: can't add [list] to \"string\" or vice versa"),
    ],
)
def test_append_refuses_mixed_types(text, message):
    with pytest.raises(ConfigError, match="x.cfg ") as err:
        parse_xlcfg(text, "x.cfg")
    assert message in str(err.value)


# -- syntax errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, where, expected",
    [
        ('name = web\n', "line 1 column 8", 'expected a value: a "string", a number or a [list], found \'web\' '
                                            '(strings are quoted: "web")'),
        ('name "web"\n', "line 1 column 6", "expected '=' after name, found \"web\""),
        ('memory = 1 2\n', "line 1 column 12", "expected ';' or a new line after the value, found '2'"),
        ('disk = ["a" "b"]\n', "line 1 column 13", "expected ',' or ']' in the list opened at line 1 column 8"),
        ('\n\nname = "unterminated\n', "line 3 column 8", 'unterminated string: expected the closing "'),
        ("name = 'a\\\n'\n", "line 1 column 8", "unterminated string"),
        ('= 3\n', "line 1 column 1", "expected a setting (KEY = VALUE), found '='"),
        ('Name = "a"\n', "line 1 column 1", "unexpected character 'N'"),
        ('memory = -1\n', "line 1 column 10", "unexpected character '-'"),
        ('memory = 64M\n', "line 1 column 10", "expected a number (decimal, 0 then octal digits, or 0x then hex "
                                               "digits), found '64M'"),
        ('memory = 09\n', "line 1 column 10", "found '09'"),
        ('ratio = 1.5\n', "line 1 column 9", "found '1.5'"),
        ('x = "\\q"\n', "line 1 column 6", "unknown escape \\q"),
        ('x = "\\x4"\n', "line 1 column 6", "expected two hex digits after \\x"),
        ('x = "\\777"\n', "line 1 column 6", "octal escape \\777 is above \\377"),
        ('x = [1,,2]\n', "line 1 column 8", "expected a value"),
        ('x = [,]\n', "line 1 column 6", "expected a value"),
        ('x = [1\n', "line 2 column 1", "expected ',' or ']' in the list opened at line 1 column 5, found the end "
                                        "of the text"),
        ('x =\n1\n', "line 1 column 4", "expected a value: a \"string\", a number or a [list], found the end of "
                                        "the line"),
        ('x\n= 1\n', "line 1 column 2", "expected '=' after x, found the end of the line"),
        ('x = 1 # ok\ny = {}\n', "line 2 column 5", "unexpected character '{'"),
        ("x = " + "[" * 70 + "]" * 70, "line 1 column 69", "lists nested more than 64 deep"),
    ],
)
def test_syntax_errors_name_the_file_line_column_and_what_was_expected(text, where, expected):
    with pytest.raises(ConfigError) as err:
        parse_xlcfg(text, "x.cfg")
    assert str(err.value).startswith(f"x.cfg {where}: ")
    assert expected in str(err.value)


# -- command-line overrides ----------------------------------------------------------------------


def test_overrides_use_the_value_grammar_and_take_bare_words_as_strings():
    assert parse_override("memory=64") == ("memory", 64)
    assert parse_override("memory = 0x40") == ("memory", 64)
    assert parse_override("name=web") == ("name", "web")
    assert parse_override('name="a b"') == ("name", "a b")
    assert parse_override("cpus=0-3,^1") == ("cpus", "0-3,^1")
    assert parse_override("extra=console=hvc0 quiet") == ("extra", "console=hvc0 quiet")
    assert parse_override('disk=["/x.img,raw,xvda"]') == ("disk", ["/x.img,raw,xvda"])


@pytest.mark.parametrize(
    "text, message",
    [
        ("memory", "'memory' on the command line column 7: expected '=' after memory"),
        ("", "is not one setting"),
        ("a=1; b=2", "is not one setting"),
        ("Memory=64", "unexpected character 'M'"),
        ("memory=", "expected a value"),
    ],
)
def test_bad_overrides(text, message):
    with pytest.raises(ConfigError) as err:
        parse_override(text)
    assert message in str(err.value)


def test_overrides_are_read_after_the_file_as_xl_create_does():
    base = parse_xlcfg('name = "web"\nmemory = 16\ndisk = ["a,,xvda"]\nextra = "quiet"\n', "web.cfg")
    result = apply_overrides(base, ['cpus="0-3"; vcpus=2', 'disk += ["b,,xvdb"]', "memory=48", "extra+= debug"])
    assert result == {"name": "web", "memory": 48, "disk": ["a,,xvda", "b,,xvdb"], "extra": "quietdebug",
                      "cpus": "0-3", "vcpus": 2}
    assert result.where("memory") == "the command line" and result.where("name") == "web.cfg line 1"
    assert base["memory"] == 16 and base.where("memory") == "web.cfg line 2"  # the input is not modified


def test_an_override_that_fails_leaves_nothing_half_applied():
    base = Settings("x.cfg", {"memory": 16})
    with pytest.raises(ConfigError):
        apply_overrides(base, ["memory += 2"])
    assert apply_overrides(base, []) == {"memory": 16}


def test_format_value_writes_xl_syntax():
    assert format_value("lots") == '"lots"'
    assert format_value('a "b"\n') == '"a \\"b\\"\\n"'
    assert format_value(["a", 1, [2]]) == '["a", 1, [2]]'
    assert format_value(True) == "true" and format_value(1.5) == "1.5"
    assert parse_xlcfg("x = " + format_value('tab\t bell\a nul\x00 "q" \\'))["x"] == 'tab\t bell\a nul\x00 "q" \\'


# -- properties ----------------------------------------------------------------------------------

_NAMED = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


@st.composite
def xl_strings(draw):
    """(value, xl.cfg text) for a string, written with randomly chosen escapes and quotes."""
    value = draw(st.text(max_size=12))
    quote = draw(st.sampled_from(['"', "'"]))
    parts = []
    for ch in value:
        if ch == "\\":
            choices = ["\\\\"]
        elif ch == quote:
            choices = ["\\" + quote]
        elif ch == "\n":
            choices = ["\\n", "\\x0a", "\\012"]
        else:
            choices = [ch]
            if ch in _NAMED:
                choices.append(_NAMED[ch])
            if ch in "\"'":
                choices.append("\\" + ch)
            if ord(ch) < 256:
                choices += [f"\\x{ord(ch):02x}", f"\\{ord(ch):03o}"]
        parts.append(draw(st.sampled_from(choices)))
    return value, quote + "".join(parts) + quote


@st.composite
def xl_numbers(draw):
    value = draw(st.integers(0, 2**63))
    style = draw(st.sampled_from(["decimal", "hex", "octal"]))
    if style == "hex":
        return value, draw(st.sampled_from(["0x", "0X"])) + format(value, draw(st.sampled_from(["x", "X"])))
    if style == "octal":
        return value, "0" + format(value, "o")
    return value, str(value)


@st.composite
def xl_lists(draw, children):
    items = draw(st.lists(children, max_size=4))
    text = "[" + draw(st.sampled_from(["", " ", "\n", "\t", "  # why not\n"]))
    for index, (_, item) in enumerate(items):
        if index:
            text += draw(st.sampled_from([",", ", ", " ,", ",\n", "\n,", ", # note\n"]))
        text += item
    if items and draw(st.booleans()):
        text += draw(st.sampled_from([",", ",\n", " , "]))
    text += draw(st.sampled_from(["", " ", "\n"])) + "]"
    return [value for value, _ in items], text


xl_values = st.recursive(st.one_of(xl_strings(), xl_numbers()), xl_lists, max_leaves=12)
keys = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
separators = st.sampled_from(["\n", ";", " ; ", "\n\n", "  # comment ; = [\n", "\r\n", ";\n"])


@settings(max_examples=250, deadline=None)
@given(st.dictionaries(keys, xl_values, max_size=6), st.data())
def test_rendered_settings_parse_back_to_themselves(config, data):
    statements = []
    for key, (_, text) in config.items():
        space = data.draw(st.sampled_from(["", " ", "\t", "  "]))
        statements.append(f"{key}{space}={space}{text}")
    separator = data.draw(separators)
    text = data.draw(st.sampled_from(["", "# header\n", "\n"])) + separator.join(statements)
    text += data.draw(st.sampled_from(["", "\n", separator]))
    assert parse_xlcfg(text) == {key: value for key, (value, _) in config.items()}


syntax_soup = st.text(alphabet="[]=;,+#\"'\\\n\t xyz019-.:^", max_size=60)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=120), syntax_soup))
def test_arbitrary_text_fails_only_with_config_error(text):
    try:
        parsed = parse_xlcfg(text, "fuzz.cfg")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.cfg line ")
    else:
        assert isinstance(parsed, dict)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=60), syntax_soup))
def test_arbitrary_overrides_fail_only_with_config_error(text):
    try:
        key, _ = parse_override(text)
    except ConfigError:
        pass
    else:
        assert key

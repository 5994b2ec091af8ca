"""What an SQL statement may do, as far as its text shows: pure functions, cached by text.

The text alone never makes a statement safe to run twice: a view, a
row-level-security policy or a function body does what the text does not show.
It only sorts statements for :mod:`.retry`:

- ``READ``: one ``SELECT`` that locks nothing, creates nothing (no ``INTO``),
  and calls only built-in functions that neither write nor change the session.
  Such a statement *may* be re-run after a lost connection, once the new
  session has confirmed what the text cannot show (:func:`.reads.confirm_read`)
  and only inside a read-only transaction;
- ``PLAIN``: what runs once and leaves nothing in the session a new one would
  lack: one ``INSERT``/``UPDATE``/``DELETE``/``MERGE`` into a relation outside
  the system catalogs (what the ORM sends), transaction control (``BEGIN``,
  ``SAVEPOINT``, ``COMMIT``...: gone with the transaction), a ``SELECT`` that
  locks rows (``select_for_update()``), reads the catalogs, or has CTEs, and
  ``EXPLAIN``. Never re-run;
- ``OTHER``: everything else (``SET``, ``set_config()``, a write to
  ``pg_settings``, DDL, ``LISTEN``, two statements, a function of your own,
  text the scanner cannot read). It may have changed the session: read retry
  ends for the connection.

The scanner reads PostgreSQL's lexical structure (quoted names, string and
dollar-quoted literals, comments), so a comment or a literal cannot hide a
call, and a quoted or escaped name cannot disguise one.

A name written after a dot (``t.audit``, ``(t).audit``, ``s.t.audit``) is a
column only if the row has one of that name: otherwise PostgreSQL calls the
function ``audit(t)`` (its functional notation), in any clause, quoted or
not. The text cannot tell which, so a ``READ`` lists every such name for the
new session to check (:attr:`Statement.attributes`).

What is kept, and what is not read at all:

- the classification is cached by text (the ORM sends the same texts again
  and again; a hit is one dictionary look-up), bounded by the memory of the
  texts kept (``CACHE_BYTES``) and by their number: when either would be
  exceeded the cache is emptied, and the texts in use are classified again
  as they come (one scan each);
- a text longer than ``MAX_SCANNED`` characters is neither scanned nor kept:
  it is ``OTHER``. Scanning costs about a microsecond per character (more
  than half a second for a 65,000-row ``INSERT ... VALUES``, paid again for
  every distinct text), and such a text is rarely sent twice. Not
  scanned, it cannot be shown to be one statement without calls of your own,
  so it is never re-run and ends read retry for the connection, whatever its
  first word: an ``INSERT`` could go on with ``; SET search_path ...``.
"""

from __future__ import annotations

import enum
import re
import sys
import threading
from dataclasses import dataclass
from itertools import pairwise

#: Longer texts are not read (``OTHER``): some 15 ms of scanning at most.
MAX_SCANNED = 16 * 1024
#: The memory the cached texts may take, and how many the cache holds.
CACHE_BYTES = 4 * 1024 * 1024
CACHE_ENTRIES = 4096


class Kind(enum.Enum):
    READ = "read"
    PLAIN = "plain"
    OTHER = "other"


@dataclass(frozen=True)
class Statement:
    kind: Kind
    #: The relations a READ names after FROM and JOIN, as written (quotes kept).
    relations: tuple[str, ...] = ()
    #: The functions it calls (names folded as PostgreSQL folds them), constructs excluded.
    functions: tuple[str, ...] = ()
    #: Every name written after a dot: a column, or a call of the function of that name.
    attributes: tuple[str, ...] = ()


OTHER = Statement(Kind.OTHER)
PLAIN = Statement(Kind.PLAIN)

# SQL constructs written like calls (not functions in pg_proc).
SQL_CONSTRUCTS = frozenset(
    """
    cast row array exists in any all some values over filter grouping coalesce nullif
    greatest least trim
    """.split()
)
# Built-ins that neither write nor change the session, and those constructs.
# A name not listed is "a function we cannot classify".
HARMLESS_FUNCTIONS = SQL_CONSTRUCTS | frozenset(
    """
    abs acos asin atan atan2 avg bit_length bool_and bool_or btrim cardinality cbrt ceil
    ceiling char_length character_length chr coalesce concat concat_ws cos cot count
    cume_dist current_date current_setting current_time current_timestamp date_part
    date_trunc degrees dense_rank div every exp extract first_value floor format
    greatest initcap isfinite jsonb_agg jsonb_array_elements jsonb_array_length
    jsonb_build_array jsonb_build_object jsonb_each jsonb_extract_path
    jsonb_extract_path_text jsonb_object_agg jsonb_object_keys jsonb_typeof json_agg
    json_build_array json_build_object json_build_object lag last_value lead least left
    length ln localtime localtimestamp log log10 lower lpad ltrim make_date
    make_interval make_time make_timestamp make_timestamptz max md5 min mod now
    nth_value ntile nullif octet_length overlay percent_rank percentile_cont
    percentile_disc pi position power radians rank regexp_replace regexp_match
    regexp_matches repeat replace reverse right round row_number rpad rtrim sha224
    sha256 sha384 sha512 sign sin split_part sqrt stddev stddev_pop stddev_samp strpos
    string_agg array_agg substr substring sum tan timezone to_char to_date to_json
    to_jsonb to_number to_timestamp translate trim trunc unnest upper var_pop var_samp
    variance width_bucket generate_series array_length array_position array_positions
    array_to_string string_to_array array_cat array_append array_prepend array_remove
    array_replace array_upper array_lower gen_random_uuid random clock_timestamp
    statement_timestamp transaction_timestamp timeofday age any_value bit_and bit_or
    bool int int2 int4 int8 float4 float8 numeric varchar char text timestamp
    timestamptz time timetz interval date inet cidr uuid
    """.split()
)

# Keywords that end a FROM list, and those inside it that name no relation.
_FROM_LIST_END = frozenset(
    """
    where group having window order limit offset fetch for union intersect except
    returning into
    """.split()
)
_JOIN_WORDS = frozenset(
    """
    only lateral natural cross inner left right full outer as
    """.split()
)
_WRITE_KEYWORDS = frozenset({"insert", "update", "delete", "merge"})
_TRANSACTION_CONTROL = frozenset("begin start commit end rollback abort savepoint release".split())
_CATALOG_SCHEMAS = frozenset({"pg_catalog", "information_schema"})

_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<line_comment>--[^\n]*)
    | (?P<block_comment>/\*)
    | (?P<dollar>\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$)
    | (?P<escaped_string>[eE]'(?:[^'\\]|\\.|'')*')
    | (?P<unicode>[uU]&['"])
    | (?P<string>'(?:[^']|'')*')
    | (?P<quoted>"(?:[^"]|"")*")
    | (?P<placeholder>%(?:\([^)]*\))?s|\$\d+)
    | (?P<name>[A-Za-z_\x80-\uffff][A-Za-z_0-9$\x80-\uffff]*)
    | (?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)
    | (?P<symbol>::|[().,;\[\]])
    | (?P<operator>[-+*/<>=~!@#%^&|`?]+)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Token:
    kind: str  # "name", "quoted", "symbol", "literal", "operator"
    text: str

    @property
    def word(self) -> str | None:
        """A bare name folded to lower case (what PostgreSQL does); None otherwise."""
        return self.text.lower() if self.kind == "name" else None

    @property
    def identifier(self) -> str | None:
        """The name it stands for: folded when bare, as written inside quotes."""
        if self.kind == "name":
            return self.text.lower()
        if self.kind == "quoted":
            return self.text[1:-1].replace('""', '"')
        return None


class _Unreadable(Exception):
    pass


def _tokens(sql: str) -> list[_Token]:
    tokens: list[_Token] = []
    position, end = 0, len(sql)
    while position < end:
        match = _TOKEN.match(sql, position)
        if match is None:
            raise _Unreadable
        group = match.lastgroup or ""  # (every alternative of _TOKEN is a named group)
        position = match.end()
        if group in ("space", "line_comment"):
            continue
        if group == "block_comment":
            position = _skip_block_comment(sql, position)
        elif group == "dollar":
            closing = sql.find(match.group(), position)
            if closing < 0:
                raise _Unreadable
            position = closing + len(match.group())
            tokens.append(_Token("literal", "$$"))
        elif group == "unicode":
            raise _Unreadable  # U&"\0073et_config": escapes could spell any name
        elif group in ("escaped_string", "string", "number", "placeholder"):
            tokens.append(_Token("literal", match.group()))
        else:
            tokens.append(_Token(group, match.group()))
    return tokens


def _skip_block_comment(sql: str, position: int) -> int:
    depth = 1  # PostgreSQL's block comments nest
    while depth:
        opening, closing = sql.find("/*", position), sql.find("*/", position)
        if closing < 0:
            raise _Unreadable
        if 0 <= opening < closing:
            depth, position = depth + 1, opening + 2
        else:
            depth, position = depth - 1, closing + 2
    return position


def _qualified_name(tokens: list[_Token], index: int) -> tuple[str, list[str], int]:
    """The (possibly schema-qualified) name starting at ``index``: text, parts, next index."""
    parts: list[str] = []
    texts: list[str] = []
    while index < len(tokens) and (identifier := tokens[index].identifier) is not None:
        parts.append(identifier)
        texts.append(tokens[index].text)
        if index + 1 < len(tokens) and tokens[index + 1].text == ".":
            index += 2
        else:
            index += 1
            break
    return ".".join(texts), parts, index


# Keywords a "(" may follow without a call: grouping, subqueries, column lists.
_NOT_CALLS = frozenset(
    """
    on and or not where having when then else by distinct between like ilike similar is
    using returning set select from join lateral into as with union intersect except
    case limit offset
    """.split()
)


def _calls(tokens: list[_Token]) -> list[tuple[str, list[str]]]:
    """Every name followed by "(": a function call, or a construct written like one."""
    found = []
    for index, token in enumerate(tokens):
        if token.text != "(" or index == 0:
            continue
        start = index - 1
        while start >= 2 and tokens[start - 1].text == "." and tokens[start - 2].identifier:
            start -= 2
        if tokens[start].identifier is None or tokens[start].word in _NOT_CALLS:
            continue  # "(" after a symbol, a literal, an operator or a keyword: grouping
        if start > 0 and tokens[start - 1].word == "into":
            continue  # INSERT INTO t (columns)
        text, parts, _ = _qualified_name(tokens, start)
        found.append((text, parts))
    return found


def _harmless(calls: list[tuple[str, list[str]]]) -> bool:
    """Only built-ins that neither write nor change the session (or SQL constructs)."""
    for _, parts in calls:
        if len(parts) == 2 and parts[0] != "pg_catalog":
            return False
        if len(parts) > 2 or parts[-1] not in HARMLESS_FUNCTIONS:
            return False
    return True


def _group_end(tokens: list[_Token], index: int) -> int:
    """The index after the ")" that closes the "(" at ``index``."""
    depth = 0
    for position in range(index, len(tokens)):
        if tokens[position].text == "(":
            depth += 1
        elif tokens[position].text == ")":
            depth -= 1
            if depth == 0:
                return position + 1
    raise _Unreadable


def _relations(tokens: list[_Token]) -> list[str]:
    """Every relation named in a FROM list: the first item, after commas and JOINs.

    A FROM inside parentheses that do not open a SELECT belongs to a construct
    (``EXTRACT(YEAR FROM ...)``, ``SUBSTRING(x FROM 1)``): not a relation list.
    Subqueries have FROM lists of their own, read when the scan reaches them.
    """
    relations: list[str] = []
    opened: list[int] = []  # indexes of the "(" still open
    for index, token in enumerate(tokens):
        if token.text == "(":
            opened.append(index)
        elif token.text == ")" and opened:
            opened.pop()
        elif token.word == "from" and (not opened or tokens[opened[-1] + 1].word == "select"):
            relations.extend(_from_list(tokens, index + 1))
    return relations


def _from_list(tokens: list[_Token], index: int) -> list[str]:
    relations: list[str] = []
    depth = 0  # parenthesized joins: FROM (a JOIN b ON ...)
    expect_relation = True
    while index < len(tokens):
        token = tokens[index]
        word = token.word
        if token.text == "(":
            if expect_relation and tokens[index + 1].word != "select":
                depth, index = depth + 1, index + 1  # a parenthesized join
            else:  # a subquery, a join condition, a call's arguments: read elsewhere
                index = _group_end(tokens, index)
                expect_relation = False
            continue
        if token.text == ")":
            if depth == 0:
                break  # the end of the subquery this FROM list belongs to
            depth, index = depth - 1, index + 1
            continue
        if depth == 0 and word in _FROM_LIST_END:
            break
        if token.text == "," or word == "join":
            expect_relation = True
        elif word in ("on", "using"):
            expect_relation = False
        elif word in _JOIN_WORDS:
            pass
        elif expect_relation:
            if token.identifier is None:
                raise _Unreadable
            text, _, after = _qualified_name(tokens, index)
            if not (after < len(tokens) and tokens[after].text == "("):
                relations.append(text)  # else a function in FROM: checked as a call
            expect_relation = False
            index = after
            continue
        index += 1
    return relations


def _is_catalog(parts: list[str]) -> bool:
    return (len(parts) > 1 and parts[0] in _CATALOG_SCHEMAS) or parts[-1].startswith("pg_")


def _classify(sql: str) -> Statement:
    try:
        tokens = _tokens(sql)
    except _Unreadable:
        return OTHER
    while tokens and tokens[-1].text == ";":
        tokens.pop()
    if not tokens or any(token.text == ";" for token in tokens):
        return OTHER  # nothing, or more than one statement
    first = tokens[0].word
    if first in _TRANSACTION_CONTROL:
        return PLAIN  # gone with its transaction (an open one stops read retry anyway)
    calls = _calls(tokens)
    if not _harmless(calls):
        return OTHER
    words = {token.word for token in tokens if token.word}
    if first == "select":
        if "into" in words:
            return OTHER  # SELECT INTO creates a table
        if _locks_rows(tokens):
            return PLAIN  # row locks end with the transaction; never re-run
        if words & _WRITE_KEYWORDS:
            return OTHER
        try:
            relations = _relations(tokens)
        except _Unreadable:
            return OTHER
        if any(_is_catalog(r.lower().replace('"', "").split(".")) for r in relations):
            return PLAIN  # the catalogs and pg_settings: read, but never re-run
        functions = tuple(dict.fromkeys(p[-1] for _, p in calls if p[-1] not in SQL_CONSTRUCTS))
        return Statement(Kind.READ, tuple(relations), functions, _attributes(tokens))
    if first in _WRITE_KEYWORDS:
        target = _write_target(tokens)
        if target is None or _is_catalog(target):
            return OTHER  # UPDATE pg_settings sets the session's settings
        return PLAIN
    if first == "with" and not words & _WRITE_KEYWORDS:
        return PLAIN  # a query with CTEs: a CTE's name reads like a relation; not re-run
    if first == "explain" and "analyze" not in words:
        return PLAIN
    return OTHER


def _attributes(tokens: list[_Token]) -> tuple[str, ...]:
    """Every name after a dot: the column or function part of ``t.name`` and ``(x).name``.

    Schema and table parts (``public.t``) come along: a name too many only
    costs a look-up in the new session.
    """
    names = (
        after.identifier
        for dot, after in pairwise(tokens)
        if dot.text == "." and after.identifier is not None
    )
    return tuple(dict.fromkeys(names))


def _locks_rows(tokens: list[_Token]) -> bool:
    for index, token in enumerate(tokens[:-1]):
        if token.word == "for" and tokens[index + 1].word in ("update", "share", "no", "key"):
            return True
    return False


def _write_target(tokens: list[_Token]) -> list[str] | None:
    """The relation an INSERT/UPDATE/DELETE/MERGE writes to."""
    index = 1
    expected = {"insert": "into", "delete": "from", "merge": "into"}.get(tokens[0].word or "")
    if expected is not None:
        if index >= len(tokens) or tokens[index].word != expected:
            return None
        index += 1
    if index < len(tokens) and tokens[index].word == "only":
        index += 1
    _, parts, _ = _qualified_name(tokens, index)
    return parts or None


_cache: dict[str, Statement] = {}
_cache_bytes = 0  # what the texts in _cache take
_cache_lock = threading.Lock()  # a miss only: a hit takes no lock

#: A text's statement if it is cached, else None: what a query with retry_reads on
#: looks up (a built-in call: the dictionary is emptied in place, never replaced).
cached_statement = _cache.get


def classify(sql: object) -> Statement:
    """The kind of ``sql`` (cached by text: the ORM sends the same texts again and again)."""
    if not isinstance(sql, str):
        return OTHER  # bytes, a psycopg sql.Composed, None: not read here
    statement = _cache.get(sql)
    if statement is None:
        if len(sql) > MAX_SCANNED:
            return OTHER  # not read, not kept
        statement = _classify(sql)
        _keep(sql, statement)
    return statement


def _keep(sql: str, statement: Statement) -> None:
    global _cache_bytes
    size = sys.getsizeof(sql)
    with _cache_lock:
        if sql in _cache:
            return  # another thread was first
        if len(_cache) >= CACHE_ENTRIES or _cache_bytes + size > CACHE_BYTES:
            _cache.clear()
            _cache_bytes = 0
        _cache[sql] = statement
        _cache_bytes += size

"""The command line of train.py and eval.py, checked and made Hydra-readable before Hydra sees it.

Hydra's override grammar rejects what users type most: a shard brace pattern once the shell has stripped
its quotes (`data.train_shards=/data/{000000..000099}.tar`) and regexes in a list
(`model.freeze=[^visual\\.conv1, logit_scale]`). Such values are quoted for Hydra here. What still cannot
work ends with one `error:` line and exit status 2, naming the closest valid keys or options, instead of
Hydra's messages (printed inside its own error handler, exit status 1) or silence: a misspelled key
(`optim.lrr=1`), an added key the schema lacks (`+suite.x=1`, which OmegaConf would drop without a word),
an unknown group option (`model=ViT-L14`), and a misspelled key inside a group file the command line
composes (a private `suite/mine.yaml` on hydra.searchpath). Keys are checked against the dataclass schemas
of bmca_clip/config/ (config/keys.py); group options and files against the config search path Hydra
would use, its defaults list included.

Entry points call `prepare_argv(sys.argv, <schema>)` once, before their @hydra.main function runs.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import OverrideParseException
from omegaconf import OmegaConf

from bmca_clip.cli import EXIT_REFUSED
from bmca_clip.config.checks import did_you_mean
from bmca_clip.config.keys import check_key, check_mapping
from bmca_clip.errors import ArgvError
from bmca_clip.paths import CONF_DIR

# {000000..000099} or {a,b}: shell-style brace expansion as webdataset's braceexpand reads it; ${...} is
# an interpolation and stays as it is.
BRACE = re.compile(r"(?<!\$)\{[^{}:]*(\.\.|,)[^{}:]*\}")


def prepare_argv(argv: list[str], schema: type, config_dir: str | Path = CONF_DIR) -> list[str]:
    """Quote brace patterns and regex list items in argv's overrides for Hydra (in place, and returned),
    then check every override: a line `error: ...` and exit status 2 for one that cannot work.
    schema: the dataclass the primary config is typed by (PretrainConfig, EvaluateConfig);
    config_dir: the primary config's folder (its groups are the options offered). A launcher whose plugin
    is not installed is refused here too, naming the extra (extras.check_launcher)."""
    from bmca_clip.errors import ConfigError
    from bmca_clip.extras import check_launcher

    try:
        argv[:] = rewrite_argv(argv, schema, config_dir)
        check_launcher(argv[1:])
    except (ArgvError, ConfigError) as err:
        sys.stdout.flush()
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_REFUSED)
    return argv


def rewrite_argv(argv: Sequence[str], schema: type, config_dir: str | Path = CONF_DIR) -> list[str]:
    """argv with its overrides made Hydra-readable; an ArgvError for an override that cannot work."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(list(argv[1:]))
    out, parser = list(argv), OverridesParser.create()
    positions = _override_positions(out, args.overrides)
    parsed: list[Override] = []
    for pos in positions:
        out[pos] = quote_override(out[pos], parser)
        parsed.append(_parse(out[pos], parser, argv[pos]))
    if not (args.help or args.hydra_help or args.shell_completion or args.info):
        repo = _config_repository(config_dir, parsed, args.config_dir)
        for override in parsed:
            check_override(override, schema, repo)
        check_group_files(repo, args.config_name or _config_name(schema), parsed, schema)
    return out


def _config_name(schema: type) -> str:
    """The primary config an entry point composes for its schema (PretrainConfig: pretrain)."""
    from bmca_clip.cli_help import PROGRAMS

    return next(name for name, (schema_name, *_) in PROGRAMS.items() if schema_name == schema.__name__)


def check_group_files(repo, config_name: str, overrides: Sequence[Override], schema: type) -> None:
    """An ArgvError naming the file, the key and the closest valid keys for a key that a group file this
    command line composes (a private suite on hydra.searchpath, an experiment) sets but the schema lacks:
    Hydra would stop with its own multi-line message and exit status 1. The files are the ones Hydra's
    defaults list picks, with every option of a swept group (-m model=a,b) too."""
    from hydra._internal.defaults_list import create_defaults_list
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from bmca_clip.config import register_configs

    register_configs()  # the primary configs' defaults start with the schemas stored in Hydra's ConfigStore
    fixed = [o for o in overrides if not o.is_sweep_override()]
    try:
        defaults = create_defaults_list(repo, config_name, fixed, prepend_hydra=True, skip_missing=True)
    except (HydraException, OmegaConfBaseException):
        return  # a composition Hydra refuses anyway, with its own message
    files = [(d.config_path, d.package) for d in defaults.defaults if d.config_path]
    for override in overrides:
        if override.is_sweep_override() and repo.group_exists(override.key_or_group):
            group = override.key_or_group
            files += [(f"{group}/{value}", None) for value in override.sweep_string_iterator()]
    for config_path, package in files:
        if config_path.startswith("hydra/") or not repo.config_exists(config_path):
            continue
        loaded = repo.load_config(config_path)
        if loaded.is_schema_source or not loaded.path.startswith("file://"):
            continue  # the schema itself, or a config shipped inside another package
        if package is None:  # a swept option: its header's package, else the group's
            header = loaded.header.get("package") or config_path.rsplit("/", 1)[0].replace("/", ".")
            package = "" if header == "_global_" else header
        content = OmegaConf.to_container(loaded.config, resolve=False)
        where = f"{loaded.path.removeprefix('file://')}/{config_path}.yaml"
        check_mapping(content, schema, package, where, schema)


def _override_positions(argv: Sequence[str], overrides: Sequence[str]) -> list[int]:
    """Indices in argv of Hydra's positional overrides (flags and their values are not overrides)."""
    positions, start = [], 1
    for override in overrides:
        pos = list(argv).index(override, start)
        positions.append(pos)
        start = pos + 1
    return positions


def quote_override(arg: str, parser: OverridesParser | None = None) -> str:
    """arg, or arg with its value quoted so that Hydra reads it as typed: a value holding a brace pattern
    becomes one quoted string; a list whose items hold regex characters gets those items quoted. An arg
    that Hydra already parses (dicts, lists, interpolations, quoted values) is returned unchanged."""
    parser = parser or OverridesParser.create()
    if _parses(arg, parser):
        return arg
    key, sep, value = arg.partition("=")
    if not sep:
        return arg
    if value.startswith("[") and value.endswith("]"):
        items = [_quote_item(item.strip(), parser) for item in _split_items(value[1:-1])]
        candidate = f"{key}=[{', '.join(items)}]"
    elif BRACE.search(value) and value[:1] not in "'\"":
        # a comma outside braces keeps its Hydra meaning, a sweep: -m key=/a/{0..9}.tar,/b/{0..9}.tar
        candidate = f"{key}={','.join(_quoted(part) for part in _split_items(value))}"
    else:
        return arg
    return candidate if _parses(candidate, parser) else arg


def _quote_item(item: str, parser: OverridesParser) -> str:
    if not item or item[:1] in "'\"" or _parses(f"k={item}", parser):
        return item
    return _quoted(item)


def _split_items(text: str) -> list[str]:
    """Comma-separated items of a list body, not split inside brackets, braces or quotes."""
    items, depth, quote, current = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(current)
            current = ""
            continue
        current += char
    return [*items, current] if current or items else []


def _quoted(value: str) -> str:
    """value as a Hydra quoted string (a backslash before a quote escapes it; others are kept)."""
    quote = "'" if "'" not in value or '"' in value else '"'
    return quote + value.replace(quote, "\\" + quote) + quote


def _parses(arg: str, parser: OverridesParser) -> bool:
    try:
        parser.parse_overrides([arg])
    except OverrideParseException:
        return False
    return True


def _parse(arg: str, parser: OverridesParser, typed: str) -> Override:
    try:
        return parser.parse_overrides([arg])[0]
    except OverrideParseException as err:
        key, sep, value = typed.partition("=")
        lines = [line.strip() for line in str(err.message).splitlines()]
        skip = ("See ", "^", "Error parsing override", "LexerNoViableAltException")
        reason = next((line for line in lines if line and not line.startswith(skip)), "grammar")
        example = f"\"{key}='{value}'\"" if sep else "\"key='value'\""
        raise ArgvError(
            f"cannot read the override {typed!r} ({reason}); quote the value for Hydra inside the shell's "
            f"quotes, e.g. {example}, or a list as \"{key or 'key'}=['item1','item2']\""
        ) from None


def _config_repository(config_dir: str | Path, overrides: Sequence[Override], extra_dir: str | None):
    """Hydra's config repository over the search path train.py / eval.py compose from, including
    hydra.searchpath entries and --config-dir given on this command line."""
    from hydra._internal.config_repository import ConfigRepository
    from hydra._internal.utils import create_config_search_path

    search_path = create_config_search_path(f"file://{Path(config_dir).resolve()}")
    for override in overrides:
        if override.key_or_group == "hydra.searchpath" and isinstance(override.value(), list):
            for entry in override.value():
                search_path.append("command-line", str(entry))
    if extra_dir:
        search_path.append("command-line", f"file://{Path(extra_dir).resolve()}")
    return ConfigRepository(config_search_path=search_path)


def check_override(override: Override, schema: type, repo) -> None:
    """An ArgvError if override names a key the schema lacks or a group option no config provides.
    An addition (+key=, ++key=) is checked too: Hydra adds an unknown key to a typed node and OmegaConf
    then drops it without a word. Deletions (~key), packages (group@pkg) and hydra.* keys are left to
    Hydra."""
    key = override.key_or_group
    if override.package is not None or override.is_delete():
        return
    if repo.group_exists(key):
        if not (override.is_add() or override.is_force_add()):
            _check_option(override, repo)
    elif not key.startswith("hydra.") and not key.startswith("hydra/"):
        added = override.is_add() or override.is_force_add()  # the message quotes an addition as typed
        try:
            check_key(key, schema)
        except ArgvError as err:
            raise ArgvError(f"{override.input_line}: {err}") if added else err from None


def _check_option(override: Override, repo) -> None:
    group = override.key_or_group
    values = override.sweep_string_iterator() if override.is_sweep_override() else [override.value()]
    options = repo.get_group_options(group)
    for value in values:
        if value is None or not isinstance(value, str) or value in options:
            continue
        hint = did_you_mean(value, options, prefix=f"{group}=")
        raise ArgvError(
            f"{group}={value} is not an option of {group}; {hint}(options: {', '.join(options)}; "
            f"each is a file conf/{group}/<option>.yaml)"
        )

"""
nanoGPT-style configuration, but strict. A script defines its settings as plain globals, then:

    from configurator import configure
    configure(globals())          # reads sys.argv[1:]

Arguments are config files (python, executed; they assign the same names) and --key=value
overrides, applied in order. Unknown keys are errors naming the closest known keys; values are
type-checked against the defaults; lists and dicts (task mixtures) can be set too, e.g.
--tasks="['math','logic']" or --mixture="{'math': 2, 'code': 1}". A script may declare range and
choice checks beside its settings, run once every override is in:

    CHECKS = {"max_iters": at_least(0), "dtype": one_of("auto", "float32", "bfloat16", "float16")}

--help prints every setting with the comment written beside it in the script. A setting that is
unknown, of the wrong type or fails a check ends the script with one `config error: ...` line and
exit status 2 (configure does it on the command line; run_main for a ConfigError raised later).
run_main(main, argv, errors) ends a script's __main__: each (exception class, status) it is given
becomes one `error: ...` line and that status (bad input: 2 in sample.py, serve.py, eval.py and the
data/ loop scripts; 1 for a failing endpoint in data/quality.py and data/synthesize.py), Ctrl-C exit
status 130. train.py goes through run_main too (a failed write or a diverged loss: `error: ...`, 1);
its Ctrl-C or SIGTERM saves first, then exits 128 + the signal, so 130 for Ctrl-C. Scripts that end
their own way: export.py (`export.py: ...`, 2) and the data/<task>/prepare.py scripts (bad input and
checks found while preparing: `error: ...`, 1).
"""
import ast
import difflib
import io
import os
import re
import sys
import tokenize
import traceback
import types

CONFIG_TYPES = (int, float, bool, str, list, dict, tuple, type(None))


class ConfigError(ValueError):
    pass


def config_keys(g):
    """The settings of a script: public lower-case globals of plain types (UPPER_CASE names are
    constants such as an imported EOT_ID, never settings)."""
    return {k: v for k, v in g.items() if not k.startswith("_") and not k.isupper() and isinstance(v, CONFIG_TYPES)}


def _unknown(key, known, where):
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(sorted(known))}"
    return ConfigError(f"{where}: unknown config key {key!r}{hint}")


def check_type(key, value, default, where):
    """Value must have the default's type; ints are accepted for floats; None defaults take anything."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, tuple) and isinstance(value, (list, tuple)):
        return tuple(value)
    elif isinstance(value, type(default)):
        return value
    raise ConfigError(f"{where}: {key} must be {type(default).__name__} like the default {default!r}, "
                      f"got {type(value).__name__} {value!r}")


# ----------------------------------------------------------------------------- declarative checks
# each returns a function value -> None when fine, else what is wrong ("must be ...")

def at_least(lo):
    return lambda v: None if v is None or v >= lo else f"must be >= {lo}"


def between(lo, hi):
    return lambda v: None if v is None or lo <= v <= hi else f"must be between {lo} and {hi}"


def one_of(*choices):
    def check(v):
        if any(v is c or (type(v) is type(c) and v == c) for c in choices):
            return None
        return f"must be one of {', '.join(map(repr, choices))}"
    return check


def matches(pattern, what):
    """A string matching the regular expression pattern (whole string); `what` describes it."""
    return lambda v: None if isinstance(v, str) and re.fullmatch(pattern, v) else f"must be {what}"


def run_checks(g, checks, sources):
    for key, check in checks.items():
        problem = check(g[key])
        if problem:
            where = sources.get(key, "default")
            raise ConfigError(f"{where}: {key} {problem}, got {g[key]!r}")


# ----------------------------------------------------------------------------- --help

def setting_comments(path):
    """{name: the comment on the line(s) of its top-level assignment} in a script's source."""
    try:
        with open(path, encoding="utf-8") as f:
            src = f.read()
        comments = {tok.start[0]: tok.string.lstrip("#").strip()
                    for tok in tokenize.generate_tokens(io.StringIO(src).readline) if tok.type == tokenize.COMMENT}
        body = ast.parse(src).body
    except (OSError, SyntaxError, tokenize.TokenError):
        return {}
    out = {}
    for node in body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            lines = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
            if lines:
                out[node.targets[0].id] = " ".join(lines)
    return out


def print_help(script, defaults):
    comments = setting_comments(script) if script else {}
    print(f"usage: python {os.path.basename(script) if script else 'this script'} [config_file.py ...] "
          f"[--key=value ...]\nsettings, their defaults and what they do:")
    for k, v in defaults.items():
        print(f"  --{k}={v!r}" + (f"  # {comments[k]}" if k in comments else ""))


# ----------------------------------------------------------------------------- config files

def run_config_file(path, ns):
    """Execute a config file in ns; returns the names it assigns. Anything but assigning settings
    (an exception, sys.exit) is a ConfigError naming the line."""
    try:
        with open(path, encoding="utf-8") as f:
            src = f.read()
    except OSError as e:
        # `max_iters=5` without the dashes reads as a file name
        hint = f"; did you mean --{path}?" if "=" in path and not os.path.exists(path) else ""
        raise ConfigError(f"config file {path!r}: {e.strerror}{hint}") from None
    try:
        code = compile(src, path, "exec")
        exec(code, ns)
    except SystemExit as e:  # would end the run silently (exit 0) without training
        raise ConfigError(f"config file {path}: it calls sys.exit({e.code!r}); a config file only assigns settings") from None
    except SyntaxError as e:
        raise ConfigError(f"config file {path}, line {e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:
        lines = [fr.lineno for fr in traceback.extract_tb(e.__traceback__) if fr.filename == path]
        at = f", line {lines[-1]}" if lines else ""
        raise ConfigError(f"config file {path}{at}: {type(e).__name__}: {e}") from None
    return {n.id for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def parse_value(raw, default):
    """--key=value text to a value: Python literal if it parses, else the string itself."""
    if isinstance(default, str) or default is None:
        try:
            v = ast.literal_eval(raw)
            return v if default is None else raw  # strings stay strings: --out_dir=1 is '1'
        except (ValueError, SyntaxError):
            return raw
    if isinstance(default, bool):
        low = raw.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        return raw
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def configure(g, argv=None, checks=None, sources=None):
    """Apply config files and --key=value overrides from argv to globals g, then the checks
    (default: g's CHECKS). sources, if given, gets {key: where it was set} for every key a config
    file or an argument set, in the order they were set. Errors raise ConfigError; reading the
    command line itself (argv None: sys.argv[1:]) they end the program instead, with one line
    `config error: ...` on stderr and exit status 2, the same for every script."""
    if argv is not None:
        return _configure(g, argv, checks, sources)
    try:
        return _configure(g, sys.argv[1:], checks, sources)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)


def run_main(main, argv, errors=()):
    """Run a script's main(argv) that reads its settings with configure(g, argv): a ConfigError ends it
    like configure does on the command line (`config error: ...`, exit 2); each (exception class,
    exit status) in errors ends it with one `error: ...` line and that status; Ctrl-C with 130, as a shell."""
    try:
        main(argv)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except tuple(cls for cls, _ in errors) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(next(status for cls, status in errors if isinstance(e, cls)))


def _configure(g, argv, checks, sources):
    checks = g.get("CHECKS", {}) if checks is None else checks
    sources = {} if sources is None else sources
    defaults = config_keys(g)
    for arg in argv:
        if arg in ("-h", "--help"):
            print_help(g.get("__file__") or sys._getframe(2).f_globals.get("__file__"), defaults)
            sys.exit(0)
        if not arg.startswith("--"):
            # a config file: run it in a copy of the settings, then take what it changed
            ns = {k: g[k] for k in defaults}
            assigned = run_config_file(arg, ns)
            for k, v in ns.items():
                if k.startswith("_") or k == "__builtins__" or isinstance(v, (types.ModuleType, types.FunctionType, type)):
                    continue
                if k not in defaults:
                    raise _unknown(k, defaults, f"config file {arg}")
                g[k] = check_type(k, v, defaults[k], f"config file {arg}")
                if k in assigned:
                    sources.pop(k, None)  # re-inserted: the order says which source came last
                    sources[k] = f"config file {arg}"
            print(f"Overriding config with {arg}")
        else:
            body = arg[2:]
            if "=" not in body:
                key = body.replace("-", "_")
                hint = f" (write --{key}=VALUE, with '=')" if key in defaults else ""
                raise ConfigError(f"argument {arg!r}: expected --key=value{hint}")
            key, raw = body.split("=", 1)
            if key not in defaults:
                raise _unknown(key, defaults, f"argument {arg!r}")
            value = check_type(key, parse_value(raw, defaults[key]), defaults[key], f"argument {arg!r}")
            if value != g[key] or type(value) is not type(g[key]):  # a value equal to what is there changes nothing
                print(f"Overriding: {key} = {value!r}")
            g[key] = value
            sources.pop(key, None)
            sources[key] = f"argument {arg!r}"
    run_checks(g, {k: c for k, c in checks.items() if k in defaults}, sources)
    return {k: g[k] for k in defaults}

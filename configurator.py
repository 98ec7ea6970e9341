"""
nanoGPT-style configuration, but strict. A script defines its settings as plain globals, then:

    from configurator import configure
    configure(globals())          # reads sys.argv[1:]

Arguments are config files (python, executed; they assign the same names) and --key=value
overrides, applied in order. Unknown keys are errors naming the closest known keys; values are
type-checked against the defaults; lists and dicts (task mixtures) can be set too, e.g.
--tasks="['math','logic']" or --mixture="{'math': 2, 'code': 1}".
"""
import ast
import difflib
import os
import sys
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


def configure(g, argv=None):
    """Apply config files and --key=value overrides from argv (default sys.argv[1:]) to globals g."""
    argv = sys.argv[1:] if argv is None else argv
    defaults = config_keys(g)
    for arg in argv:
        if arg in ("-h", "--help"):
            script = os.path.basename(g.get("__file__", "this script"))
            print(f"usage: python {script} [config_file.py ...] [--key=value ...]\nsettings and their defaults "
                  f"(the comments beside them in the script say what they do):")
            for k, v in defaults.items():
                print(f"  --{k}={v!r}")
            sys.exit(0)
        if not arg.startswith("--"):
            # a config file: run it in a copy of the settings, then take what it assigned
            try:
                src = open(arg).read()
            except OSError as e:
                raise ConfigError(f"config file {arg!r}: {e.strerror}") from None
            ns = dict(defaults)
            ns.update({k: g[k] for k in defaults})
            exec(compile(src, arg, "exec"), ns)
            for k, v in ns.items():
                if k.startswith("_") or k == "__builtins__" or isinstance(v, (types.ModuleType, types.FunctionType, type)):
                    continue
                if k not in defaults:
                    raise _unknown(k, defaults, f"config file {arg}")
                g[k] = check_type(k, v, defaults[k], f"config file {arg}")
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
            g[key] = check_type(key, parse_value(raw, defaults[key]), defaults[key], f"argument {arg!r}")
            print(f"Overriding: {key} = {g[key]!r}")
    return {k: g[k] for k in defaults}

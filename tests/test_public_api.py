"""The public names are the ones we mean, and importing thrifty has no side effects."""

import subprocess
import sys

import thrifty

EXPECTED = {
    "AuthenticationError", "CallContext", "CompressResult", "ConfigurationError", "Contract", "Engine", "InvalidRequestError", "LedgerError",
    "LocalModelError", "OutputValidationError", "PermissionDeniedError", "Pipeline", "ProviderConfig", "RateLimitError", "Settings", "Stage", "ThriftyError",
    "ThriftyOptions", "UnknownContractError", "UnknownModelError", "UnknownOptionError", "UnknownProviderError", "UpstreamConnectionError",
    "UpstreamError", "UpstreamTimeoutError", "compress", "wrap",
}


def test_exported_members():
    assert set(thrifty.__all__) == EXPECTED
    for name in thrifty.__all__:
        assert getattr(thrifty, name).__module__.startswith("thrifty")


def test_errors_form_one_tree():
    for name in thrifty.__all__:
        obj = getattr(thrifty, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, thrifty.ThriftyError)


def test_import_is_light_and_side_effect_free(tmp_path):
    code = ("import sys, thrifty, os; heavy = [m for m in ('torch', 'transformers', 'sqlalchemy', 'openai', "
            "'anthropic', 'genai_prices', 'tiktoken') if m in sys.modules]; print(heavy); "
            "print(os.listdir(os.environ['THRIFTY_DATA_DIR']) if os.path.exists(os.environ['THRIFTY_DATA_DIR']) else 'absent')")
    env = {"THRIFTY_DATA_DIR": str(tmp_path / "d"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split("\n")[:2] == ["[]", "absent"]

"""The compiled pieces: the exec answerer's wait and cached answers
(collectors/enforcement/fast_answer.c) and the record MAC (transport/fast_mac.c, with OpenSSL's
libcrypto). Everything else is declared in pyproject.toml."""

from setuptools import Extension, setup

_FLAGS = ["-O2", "-Wall", "-Wextra", "-Werror"]

setup(ext_modules=[Extension("collectors.enforcement._fast_answer",
                             ["collectors/enforcement/fast_answer.c"], extra_compile_args=_FLAGS),
                   Extension("transport._fast_mac", ["transport/fast_mac.c"],
                             extra_compile_args=_FLAGS, libraries=["crypto"])])

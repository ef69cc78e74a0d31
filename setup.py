"""The one compiled piece: the exec answerer's wait and cached answers
(collectors/enforcement/fast_answer.c). Everything else is declared in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("collectors.enforcement._fast_answer",
                             ["collectors/enforcement/fast_answer.c"],
                             extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror"])])

"""The wheel also carries the project files the command line reads beside the code: pipelines/ and components/
(`cafe pipeline compile` imports them), configs/ and params.yaml. They go under ``cafe/project/`` in the wheel,
where an installed `cafe` finds them when it runs outside a checkout (cafe/cli/pipeline.py ``project_root``).
Everything else is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PROJECT_FILES = ("pipelines", "components", "configs", "params.yaml")


class BuildWithProjectFiles(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "cafe" / "project"
        target.mkdir(parents=True, exist_ok=True)
        for name in PROJECT_FILES:
            if Path(name).is_dir():
                shutil.copytree(name, target / name, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif Path(name).is_file():
                shutil.copy2(name, target / name)


setup(cmdclass={"build_py": BuildWithProjectFiles})

"""Package layout: ``rvc_lora`` plus the top-level ``conf/`` and ``recipes/`` shipped as ``rvc_lora/conf`` and
``rvc_lora/recipes`` (YAML package data), so an installed wheel composes configurations without a checkout.
Everything else is declared in pyproject.toml."""

from setuptools import find_namespace_packages, find_packages, setup

DATA_TREES = {"rvc_lora.conf": "conf", "rvc_lora.recipes": "recipes"}

packages = find_packages(include=["rvc_lora", "rvc_lora.*"])
for package, folder in DATA_TREES.items():
    packages += [package] + [f"{package}.{sub}" for sub in find_namespace_packages(where=folder)]

setup(
    packages=packages,
    package_dir=DATA_TREES,
    # All package data here: a [tool.setuptools.package-data] table in pyproject.toml would replace this.
    package_data={"rvc_lora.serve": ["static/*"]}
    | {package: ["*.yaml"] for package in packages if package.startswith(tuple(DATA_TREES))},
)

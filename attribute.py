"""Attribute generated samples to training data: ``python attribute.py --config configs/attribute/digits.yaml``."""

from lit_attr.attribution.influence import InfluenceModule
from lit_attr.attribution.run import run_attribution
from lit_attr.cli import AttributeCLI
from lit_attr.data.datamodules import AttributionDataModule


def main() -> None:
    cli = AttributeCLI(InfluenceModule, AttributionDataModule, save_config_kwargs={"overwrite": True})
    run_attribution(cli.trainer, cli.model, cli.datamodule)


if __name__ == "__main__":
    main()

"""``protect``'s configuration: defaults < --config YAML < flags, clear errors, and an exact record."""

import pytest
import yaml

from hf_mergeguard.cli.main import main
from hf_mergeguard.config import ProtectConfig, build_protect_config, dump_yaml, from_dict
from hf_mergeguard.errors import ConfigError, MergeGuardError


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_flags_override_the_file_which_overrides_the_defaults(tmp_path):
    config_file = _write(
        tmp_path / "protect.yml",
        {
            "model": "org/model",
            "base": "org/base",
            "tasks": ["gsm8k"],
            "output_dir": "out",
            "mergeguard": {"beta": 2, "skip_stage1": False, "stage1": {"alpha": 0.05, "steps": 7}},
            "selftest": {"methods": "ties,dare_ties"},
        },
    )
    config = build_protect_config(
        config_file, {"mergeguard": {"beta": 1.5, "stage1": {"steps": None, "learning_rate": 3e-5}}, "tasks": None}
    )
    assert config.mergeguard.beta == 1.5  # flag beats file
    assert config.mergeguard.skip_stage1 is False  # file beats default, and an absent flag keeps it
    assert config.mergeguard.stage1.alpha == 0.05 and config.mergeguard.stage1.steps == 7
    assert config.mergeguard.stage1.learning_rate == 3e-5
    assert config.mergeguard.exclude_share == 0.1 and config.mergeguard.mask_share == 0.1  # the paper's defaults
    assert config.selftest.methods == ["ties", "dare_ties"]
    assert config.tasks == ["gsm8k"]


def test_the_recorded_config_reads_back_to_the_same_config(tmp_path):
    config = build_protect_config(None, {"model": "m", "base": "b", "tasks": "toy_count", "output_dir": "o", "mergeguard": {"beta": 2.0}})
    text = dump_yaml(config)
    assert "token" not in text
    again = from_dict(ProtectConfig, yaml.safe_load(text))
    assert again == config


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"mergegaurd": {}}, "Did you mean 'mergeguard'"),
        ({"mergeguard": {"betta": 2}}, "Did you mean 'beta'"),
        ({"mergeguard": {"beta": "strong"}}, "must be a number"),
        ({"mergeguard": {"criticality": "slow"}}, "criticality must be 'fast' or 'exact'"),
        ({"mergeguard": {"stage1": {"reading": "sideways"}}}, "Unknown stage-1 reading"),
        ({"selftest": {"methods": "ties,frankenmerge"}}, "frankenmerge"),
    ],
)
def test_bad_options_name_the_problem(tmp_path, data, message):
    with pytest.raises(MergeGuardError, match=message):
        build_protect_config(_write(tmp_path / "protect.yml", data), {})


def test_cli_reports_config_errors_with_exit_2(tmp_path, capsys):
    bad = _write(tmp_path / "protect.yml", {"mergeguard": {"betta": 2}})
    assert main(["protect", "m", "--base", "b", "--tasks", "t", "-o", str(tmp_path / "out"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "Did you mean 'beta'" in err and "Traceback" not in err
    assert main(["protect", "m", "--tasks", "t", "-o", str(tmp_path / "out")]) == 2
    assert "--base" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    broken = tmp_path / "broken.yml"
    broken.write_text("mergeguard: [beta: 2\n")
    assert main(["protect", "--config", str(broken)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_the_mergeguard_paper_preset_is_the_paper_and_cannot_be_half_overridden():
    from hf_mergeguard.config import build_protect_config
    from hf_mergeguard.protect.stack import parse_method
    from hf_mergeguard.workdir import work_dir_for

    def config(method, **sections):
        return build_protect_config(None, {"model": "m", "base": "b", "output_dir": "o", "method": method, **sections})

    paper = config("mergeguard-paper")
    assert (paper.mergeguard.beta, paper.mergeguard.skip_stage1, paper.mergeguard.stage1.alpha) == (1.0, False, 0.01)
    assert paper.mergeguard.stage1.reading == "paper" and parse_method(paper.method) == ["mergeguard"]
    assert config("mergeguard").mergeguard.beta == 2.0  # the plain method keeps its own defaults
    assert work_dir_for(paper) != work_dir_for(config("mergeguard"))
    assert parse_method("mergelock+mergeguard-paper") == ["mergeguard", "mergelock"]
    assert config("mergeguard-paper", mergeguard={"mask_share": 0.2}).mergeguard.mask_share == 0.2  # not a preset field
    with pytest.raises(ConfigError, match="sets mergeguard.beta = 1.0, but the configuration gives 2.5"):
        config("mergeguard-paper", mergeguard={"beta": 2.5})
    with pytest.raises(ConfigError, match="twice"):
        parse_method("mergeguard+mergeguard-paper")

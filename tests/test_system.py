"""cocotb + Verilator system tests, one simulator run per build parameter set."""
import xml.etree.ElementTree as ET

import pytest

from hdl import spec
from hdl.top import CoreParams, implemented_features
from sim.build import run_cocotb

pytestmark = pytest.mark.system

DEFAULT_CASES = ["enumeration", "probe", "features_ok_refused_for_unoffered_feature",
                 "reset_mid_way", "unsupported_requests"]


def failures(results_xml):
    tree = ET.parse(results_xml)
    cases = list(tree.iter("testcase"))
    failed = [c.get("name") for c in cases if c.find("failure") is not None or c.find("error") is not None]
    return cases, failed


def run(params, cases):
    results = run_cocotb(params, "sim.cocotb_tests.system", cases)
    ran, failed = failures(results)
    assert len(ran) == len(cases), f"ran {len(ran)} of {len(cases)} cocotb tests"
    assert not failed, f"cocotb tests failed: {failed}"


def test_default_device():
    run(CoreParams(), DEFAULT_CASES)


def test_broken_feature_set_is_refused():
    broken = implemented_features() | spec.VirtioNetF.MQ | spec.VirtioNetF.CTRL_RX
    run(CoreParams(features=broken), ["broken_feature_set"])

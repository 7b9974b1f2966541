"""cocotb + Verilator system tests, one simulator run per build parameter set."""
import pytest

from hdl import spec
from hdl.top import CoreParams, implemented_features
from sim.build import run_cocotb
from sim.tests_results import cases, failed_cases

pytestmark = pytest.mark.system

DEFAULT_CASES = ["enumeration", "probe", "config_change_interrupt",
                 "features_ok_refused_for_unoffered_feature",
                 "reset_mid_way", "unsupported_requests"]


def run(params, testcases, module="sim.cocotb_tests.system"):
    results = run_cocotb(params, module, testcases)
    ran = cases(results)
    assert len(ran) == len(testcases), f"ran {len(ran)} of {len(testcases)} cocotb tests"
    assert not failed_cases(results), f"cocotb tests failed: {failed_cases(results)}"


def test_default_device():
    run(CoreParams(), DEFAULT_CASES)


def test_broken_feature_set_is_refused():
    broken = (implemented_features() & ~spec.VirtioNetF.CTRL_VQ) | spec.VirtioNetF.MQ | spec.VirtioNetF.CTRL_RX
    run(CoreParams(features=broken), ["broken_feature_set"])


@pytest.mark.parametrize("params", [
    CoreParams(queue_pairs=1, mtu=9000, mac=bytes.fromhex("5254001234ab")),
    CoreParams(queue_pairs=8, queue_size_max=1024, mtu=68),
], ids=["1pair_jumbo", "8pairs_qs1024_mtu68"])
def test_build_parameters(params):
    """Each parameter set is its own build (build/<tag>/); probe reads what was built."""
    run(params, ["enumeration", "probe"])


DATAPATH_CASES = ["tx_frames_reach_the_wire", "rx_frames_reach_the_driver",
                  "rx_without_buffers_drops_and_counts", "masked_vector_is_pending_then_fires",
                  "event_idx_reduces_notifications", "mergeable_rx_buffers_carry_long_frames",
                  "rx_without_mergeable_buffers"]
BAD_DESCRIPTOR_CASES = ["bad_descriptor_index_out_of_range", "bad_descriptor_loop",
                        "bad_descriptor_zero_length", "bad_descriptor_read_only_rx_buffer",
                        "bad_descriptor_chain_longer_than_queue",
                        "bad_descriptor_buffer_outside_host_memory"]


def run_datapath(params, testcases):
    run(params, testcases, "sim.cocotb_tests.datapath")


def test_datapath():
    run_datapath(CoreParams(), DATAPATH_CASES)


def test_bad_descriptors_need_reset_and_the_driver_recovers():
    run_datapath(CoreParams(), BAD_DESCRIPTOR_CASES)


def test_ring_indexes_wrap_around():
    run_datapath(CoreParams(queue_pairs=1, ring_start_index=0xFFF4), ["indexes_wrap_around"])


MULTIQUEUE_CASES = ["traffic_on_every_queue_both_ways", "pairs_change_under_traffic",
                    "filters_accept_and_drop_as_configured",
                    "malformed_control_commands_are_refused_and_change_nothing",
                    "link_flaps_reach_the_driver"]


def test_multiqueue_and_control_queue():
    run(CoreParams(), MULTIQUEUE_CASES, "sim.cocotb_tests.multiqueue")


@pytest.mark.parametrize("pairs", [2, 8])
def test_multiqueue_traffic_with_other_pair_counts(pairs):
    """The default build has 4 pairs; 1 pair is the wrap-around build's."""
    run(CoreParams(queue_pairs=pairs), ["traffic_on_every_queue_both_ways"],
        "sim.cocotb_tests.multiqueue")

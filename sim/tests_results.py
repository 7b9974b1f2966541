"""Reading cocotb's results XML."""
import xml.etree.ElementTree as ET

__all__ = ["cases", "failed_cases"]


def cases(results_xml):
    return [c.get("name") for c in ET.parse(results_xml).iter("testcase")]


def failed_cases(results_xml):
    return [c.get("name") for c in ET.parse(results_xml).iter("testcase")
            if c.find("failure") is not None or c.find("error") is not None]

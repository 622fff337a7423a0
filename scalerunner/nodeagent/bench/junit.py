"""Check results as JUnit XML, the report CI systems read (one testsuite per board run)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from .errors import BenchFault
from .runner import CheckResult

__all__ = ["junit_xml"]


def junit_xml(board: str, results: Sequence[CheckResult], fault: BenchFault | None = None) -> bytes:
    """A <testsuite> of ``results``; a bench fault is one <error> case, so CI shows it apart
    from a failing design."""
    failures = sum(not r.passed for r in results)
    suite = ET.Element(
        "testsuite",
        name=f"bench.{board}",
        tests=str(len(results) + (fault is not None)),
        failures=str(failures),
        errors=str(int(fault is not None)),
        time=f"{sum(r.seconds for r in results):.3f}",
    )
    for r in results:
        case = ET.SubElement(
            suite, "testcase", classname=f"bench.{board}.{r.kind}", name=r.name, time=f"{r.seconds:.3f}"
        )
        if not r.passed:
            ET.SubElement(case, "failure", message=r.message, type=r.kind).text = r.message
    if fault is not None:
        case = ET.SubElement(suite, "testcase", classname=f"bench.{board}", name="bench", time="0")
        ET.SubElement(case, "error", message=str(fault), type=fault.cause).text = fault.detail
    ET.indent(suite)
    xml: bytes = ET.tostring(suite, encoding="utf-8", xml_declaration=True)
    return xml + b"\n"

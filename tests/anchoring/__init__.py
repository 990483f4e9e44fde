"""Tests of qward.anchoring; a package so that its conftest does not shadow the top-level one."""

"""Tests of qward.tlog; a package so that its conftest does not shadow the top-level one."""

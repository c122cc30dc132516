"""The chart ships the repository's RecordingKeyConfig CRD, kept on uninstall, skippable."""

from __future__ import annotations

import copy

import pytest
import yaml

from conftest import CHART_DIR, REPO, find, one, render_docs

CRD_NAME = "recordingkeyconfigs.kekeeper.io"
REPO_CRD = REPO / "crds" / f"{CRD_NAME}.yaml"
CHART_CRD = CHART_DIR / "files" / "crds" / f"{CRD_NAME}.yaml"
NO_REPO_CRD = (f"{REPO_CRD.relative_to(REPO)} is not in this worktree yet (generated on another "
               f"branch); run `scripts/chart-test.sh sync-crd` once it lands")


def chart_added_metadata_removed(crd):
    crd = copy.deepcopy(crd)
    meta = crd["metadata"]
    meta.get("annotations", {}).pop("helm.sh/resource-policy", None)
    meta.get("annotations", {}).pop("argocd.argoproj.io/sync-options", None)
    for key in [k for k in meta.get("labels", {}) if k.startswith(("app.kubernetes.io/", "helm.sh/"))]:
        del meta["labels"][key]
    for key in ("annotations", "labels"):
        if key in meta and not meta[key]:
            del meta[key]
    return crd


def test_chart_crd_is_a_byte_copy_of_the_repo_crd():
    if not REPO_CRD.exists():
        pytest.skip(NO_REPO_CRD)
    assert CHART_CRD.read_bytes() == REPO_CRD.read_bytes(), (
        "charts/kekeeper/files/crds/ is stale: run `scripts/chart-test.sh sync-crd`")


def test_rendered_crd_equals_the_repo_crd(renders):
    if not REPO_CRD.exists():
        pytest.skip(NO_REPO_CRD)
    rendered = one(renders["default"], "CustomResourceDefinition")
    rendered = {k: v for k, v in rendered.items() if k != "__source__"}
    assert chart_added_metadata_removed(rendered) == yaml.safe_load(REPO_CRD.read_text())


def test_rendered_crd_equals_the_chart_copy(renders):
    rendered = one(renders["default"], "CustomResourceDefinition", CRD_NAME)
    rendered = {k: v for k, v in rendered.items() if k != "__source__"}
    assert chart_added_metadata_removed(rendered) == yaml.safe_load(CHART_CRD.read_text())


def test_chart_crd_file_is_one_recordingkeyconfig_crd():
    docs = [d for d in yaml.safe_load_all(CHART_CRD.read_text()) if d]
    assert len(docs) == 1
    (crd,) = docs
    assert crd["kind"] == "CustomResourceDefinition" and crd["metadata"]["name"] == CRD_NAME
    assert crd["spec"]["group"] == "kekeeper.io"
    assert crd["spec"]["names"]["kind"] == "RecordingKeyConfig"
    assert crd["spec"]["scope"] == "Namespaced"
    assert [v["name"] for v in crd["spec"]["versions"]] == ["v1alpha1"]


def test_resource_policy_keep(renders):
    for case in ("default", "namespaced", "ha", "servicemonitor", "networkpolicy", "everything"):
        crd = one(renders[case], "CustomResourceDefinition", CRD_NAME)
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep", case
        # Argo CD ignores Helm's resource policy; this keeps it from pruning the CRD.
        assert crd["metadata"]["annotations"]["argocd.argoproj.io/sync-options"] == "Prune=false,Delete=false", case


def test_crds_absent_when_skipped(renders):
    assert find(renders["no-crds"], "CustomResourceDefinition") == []


def test_keep_can_be_switched_off_for_throwaway_clusters(chart):
    crd = one(render_docs(chart, {"crds": {"keep": False}}), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})
    assert "argocd.argoproj.io/sync-options" not in crd["metadata"].get("annotations", {})


def test_extra_annotations_for_argocd(chart):
    sync = "argocd.argoproj.io/sync-options"
    # Sync options of your own are kept; the keep policy's Prune=false,Delete=false is never
    # dropped (issue 27: an example of `Prune=false` alone used to drop Delete=false).
    for given, expected in [
        ("Prune=false", "Prune=false,Delete=false"),
        ("ServerSideApply=true", "ServerSideApply=true,Prune=false,Delete=false"),
        ("Replace=true, Delete=true", "Replace=true,Prune=false,Delete=false"),
    ]:
        crd = one(render_docs(chart, {"crds": {"annotations": {sync: given}}}),
                  "CustomResourceDefinition")
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep", sync: expected}
    prune = {sync: "Prune=false"}
    # The keep policy is the chart's promise; an annotation value cannot undo it.
    crd = one(render_docs(chart, {"crds": {"annotations": {"helm.sh/resource-policy": "delete"}}}),
              "CustomResourceDefinition")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    crd = one(render_docs(chart, {"crds": {"keep": False, "annotations": prune}}),
              "CustomResourceDefinition")
    assert crd["metadata"]["annotations"] == prune


def test_nothing_in_helms_crds_directory(chart):
    """Helm's crds/ directory is never upgraded; the CRD must come only from the template."""
    assert chart.crds == []
    assert not (CHART_DIR / "crds").exists()


def test_missing_crd_file_fails_loudly(tmp_path):
    import shutil

    from helm_python.chart import Chart

    copy_dir = tmp_path / "kekeeper"
    shutil.copytree(CHART_DIR, copy_dir)
    for f in (copy_dir / "files" / "crds").iterdir():
        f.unlink()
    with Chart.load(copy_dir) as broken:
        with pytest.raises(Exception, match="no files/crds"):
            broken.render({}, name="kekeeper", namespace="kekeeper-system")
        assert not find(render_docs(broken, {"crds": {"install": False}}), "CustomResourceDefinition")

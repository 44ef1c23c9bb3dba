"""networkx views, the rewrite diff and DOT export of adapted graphs."""

from __future__ import annotations

import networkx as nx
import pytest

import graphpeft
from dot_reader import read_dot
from graphpeft.errors import UsageError
from graphpeft.tools.graph_records import diff_of
from graphpeft.tools.viz import to_dot, write
from models import tiny_llama
from shared_models import llama_with_lora

Q0 = "model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def ops() -> nx.DiGraph:
    return graphpeft.to_networkx(llama_with_lora(), level="op")


@pytest.fixture(scope="module")
def modules() -> nx.DiGraph:
    return graphpeft.to_networkx(llama_with_lora(), level="module")


def test_op_graph_marks_every_inserted_node_with_site_adapter_rule_method_role(ops):
    marked = {n: d["adapter"] for n, d in ops.nodes(data=True) if d["adapter"]}
    assert len(marked) == 4 * 6  # 4 sites x (lora_A, lora_B, down, up, scale, add)
    roles = {a["role"] for a in marked.values() if a["site"] == f"{Q0}:linear"}
    assert roles == {"lora_A", "lora_B", "lora_down", "lora_up", "lora_scale", "lora_add"}
    assert {(a["adapter"], a["rule"], a["method"]) for a in marked.values()} == {("default", "lora", "lora")}
    assert all(ops.nodes[n]["kind"] == "adapter" for n in marked)


def test_op_graph_marks_claimed_site_nodes_with_their_claims(ops):
    sites = {d["module"]: d["claims"] for _, d in ops.nodes(data=True) if d["kind"] == "site"}
    assert set(sites) == {f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in "qv"}
    assert sites[Q0] == ["default:lora:lora"]


def test_op_graph_edges_follow_the_adapter_dataflow(ops):
    add = next(
        n for n, d in ops.nodes(data=True) if d["adapter"] and d["adapter"]["role"] == "lora_add" and d["module"] == Q0
    )
    site = next(n for n, d in ops.nodes(data=True) if d["kind"] == "site" and d["module"] == Q0)
    assert ops.has_edge(site, add)
    assert all(not ops.nodes[user]["adapter"] for user in ops.successors(add)), "the site's old users now read lora_add"
    assert not any(not ops.nodes[user]["adapter"] for user in ops.successors(site))


def test_module_graph_groups_ops_by_innermost_module(modules):
    q = modules.nodes[Q0]
    assert q["kind"] == "adapted"
    assert q["adapters"] == ["default:lora"]
    assert q["cls"] == "Linear"
    assert q["ops"] == 2 + 6  # weight read + linear, plus the adapter nodes
    assert modules.nodes["model.layers.0.self_attn.k_proj"]["kind"] == "module"
    assert not any(d.get("target") for _, d in modules.nodes(data=True)), "no op-level nodes remain"
    assert modules.has_edge("model.layers.0.input_layernorm", Q0)


def test_module_graph_collapses_to_a_chosen_depth():
    layers = graphpeft.to_networkx(llama_with_lora(), level="module", depth=2)
    assert {"model.layers.0", "model.layers.1", "model.embed_tokens"} <= set(layers)
    assert layers.nodes["model.layers.0"]["adapters"] == ["default:lora"]
    assert nx.has_path(layers, "model.layers.0", "model.layers.1")


def test_diff_lists_added_nodes_per_site_and_the_rewired_users():
    diff = diff_of(llama_with_lora())
    by_site = diff.by_site()
    assert set(by_site) == {f"model.layers.{i}.self_attn.{p}_proj:linear" for i in (0, 1) for p in "qv"}
    assert all(len(records) == 6 for records in by_site.values())
    assert len(diff.rewired) == 4
    rewired_to = {after[0] for _, _, after in diff.rewired}
    assert "model_layers_0_self_attn_q_proj_lora_add" in rewired_to
    text = diff.text()
    assert text.startswith("rewrite diff: 24 added, 4 rewired")
    assert f"+ {Q0}:linear  [lora rule 'lora', adapter 'default']  6 nodes" in text


def test_dot_text_parses_back_to_the_same_graph(ops):
    """Checked with the small DOT reader in tests/dot_reader.py (no graphviz needed)."""
    nodes, edges = read_dot(to_dot(ops))
    assert set(nodes) == set(ops.nodes)
    assert sorted(edges) == sorted(ops.edges)
    adapter = next(n for n, d in ops.nodes(data=True) if d["adapter"])
    assert "lora / default" in nodes[adapter]["label"]


@pytest.mark.parametrize("level", ["op", "module"])
def test_dot_parses_with_pydot_when_available(level):
    pydot = pytest.importorskip("pydot", reason="pydot is not installed; the structural DOT check above still runs")
    graph = graphpeft.to_networkx(llama_with_lora(), level=level)
    (parsed,) = pydot.graph_from_dot_data(to_dot(graph))
    names: set[str] = set()
    pending = [parsed]
    while pending:  # op-level DOT puts each module's ops in a cluster subgraph
        current = pending.pop()
        names |= {n.get_name().strip('"') for n in current.get_nodes()} - {"node", "graph", "edge"}
        pending.extend(current.get_subgraphs())
    assert names == set(graph.nodes)
    assert len(parsed.get_edges()) == graph.number_of_edges()


def test_write_picks_the_format_from_the_suffix(tmp_path):
    path = write(llama_with_lora(), tmp_path / "graph.dot", level="module")
    assert path.read_text().startswith("digraph graphpeft {")
    with pytest.raises(UsageError, match=r"\*\.html or \*\.dot"):
        write(llama_with_lora(), tmp_path / "graph.svg")


def test_a_bare_graph_module_is_viewed_as_it_is():
    base = llama_with_lora()._base_graph()
    graph = graphpeft.to_networkx(base)
    assert graph.number_of_nodes() == len(base.graph.nodes)
    assert not any(d["adapter"] for _, d in graph.nodes(data=True))


def test_views_refuse_a_model_that_is_not_adapted():
    with pytest.raises(UsageError, match=r"wrap it with graphpeft\.apply"):
        graphpeft.to_networkx(tiny_llama())
    with pytest.raises(UsageError, match="level must be one of op, module"):
        graphpeft.to_networkx(llama_with_lora(), level="layer")


def test_viewed_graph_is_the_graph_forward_runs(ops):
    model = llama_with_lora()
    runs = model._graph(model._canonical_kwargs())
    assert {n.name for n in runs.graph.nodes} == set(ops.nodes)
    assert {(a.name, n.name) for n in runs.graph.nodes for a in n.all_input_nodes} == set(ops.edges)

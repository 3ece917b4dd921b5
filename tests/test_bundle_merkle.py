"""RFC 6962 Merkle tree hash: the definition computed by hand, and the published test vectors."""

from __future__ import annotations

import hashlib

import pytest

from airgap_orch.bundle.errors import MerkleError
from airgap_orch.bundle.merkle import (
    EMPTY_ROOT,
    LeafHasher,
    MerkleTree,
    leaf_hash,
    merkle_root,
    merkle_root_of_leaf_hashes,
    node_hash,
    verify_merkle_root,
)
from airgap_orch.errors import VerificationFailed, exit_code_for


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def reference_mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, written as the RFC states it (recursive, k = largest power of two < n)."""
    if not leaves:
        return sha256(b"")
    if len(leaves) == 1:
        return sha256(b"\x00" + leaves[0])
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return sha256(b"\x01" + reference_mth(leaves[:k]) + reference_mth(leaves[k:]))


# The leaf inputs and tree heads used by Certificate Transparency implementations (transparency-dev/merkle
# testonly/constants.go; also in google/certificate-transparency): root hash by tree size 0..8.
CT_LEAVES = [bytes.fromhex(h) for h in
             ("", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def test_empty_tree_is_the_sha256_of_the_empty_string():
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert merkle_root([]) == EMPTY_ROOT
    assert merkle_root_of_leaf_hashes([]) == EMPTY_ROOT


def test_leaf_and_node_hashes_use_the_0x00_and_0x01_prefixes():
    assert leaf_hash(b"") == sha256(b"\x00")
    assert leaf_hash(b"") != EMPTY_ROOT  # an empty leaf is not an empty tree
    assert leaf_hash(b"L123456").hex() == "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    assert node_hash(b"N123", b"N456").hex() == "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"


def test_small_trees_match_the_definition_computed_by_hand():
    a, b, c = b"a", b"b", b"c"
    la, lb, lc = sha256(b"\x00a"), sha256(b"\x00b"), sha256(b"\x00c")
    assert merkle_root([a]) == la
    assert merkle_root([a, b]) == sha256(b"\x01" + la + lb)
    # three leaves split 2 + 1 (k = 2), not 1 + 2
    assert merkle_root([a, b, c]) == sha256(b"\x01" + sha256(b"\x01" + la + lb) + lc)
    assert merkle_root([a, b, c]) != sha256(b"\x01" + la + sha256(b"\x01" + lb + lc))


@pytest.mark.parametrize("size", range(len(CT_ROOTS)))
def test_certificate_transparency_vectors(size):
    assert merkle_root(CT_LEAVES[:size]).hex() == CT_ROOTS[size]


def test_incremental_tree_matches_the_recursive_definition_for_every_size_up_to_70():
    leaves = [bytes([i]) * (i % 5) for i in range(70)]
    tree = MerkleTree()
    assert tree.root() == reference_mth([])
    for n, leaf in enumerate(leaves, start=1):
        tree.add_leaf(leaf)
        assert tree.size == n
        assert tree.root() == reference_mth(leaves[:n]), n


def test_leaf_hasher_fed_in_chunks_equals_the_leaf_hash():
    data = bytes(range(256)) * 100
    hasher = LeafHasher()
    for start in range(0, len(data), 777):
        hasher.update(data[start:start + 777])
    assert hasher.digest() == leaf_hash(data)
    assert merkle_root_of_leaf_hashes([hasher.digest(), leaf_hash(b"x")]) == merkle_root([data, b"x"])


def test_leaf_hash_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError):
        MerkleTree().add_leaf_hash(b"\x00" * 31)


def test_verify_merkle_root_refuses_a_reordered_member_list():
    hashes = [leaf_hash(x) for x in CT_LEAVES]
    assert verify_merkle_root(hashes, CT_ROOTS[8]).hex() == CT_ROOTS[8]
    swapped = [hashes[1], hashes[0], *hashes[2:]]
    with pytest.raises(MerkleError) as caught:
        verify_merkle_root(swapped, CT_ROOTS[8])
    assert caught.value.reason_code == "merkle:root-mismatch"
    assert isinstance(caught.value, VerificationFailed) and exit_code_for(caught.value) == 4

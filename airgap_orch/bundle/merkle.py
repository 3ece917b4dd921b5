"""RFC 6962 Merkle tree hash (MTH, section 2.1) over a bundle's members in manifest order.

    MTH({})        = SHA-256()                                   (the empty tree)
    MTH({d0})      = SHA-256(0x00 || d0)                         (a leaf)
    MTH(D[0:n])    = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))  k = largest power of two < n

The importer hashes members while it streams them, so the tree is built from leaf hashes: `LeafHasher`
takes a member's bytes in chunks, `MerkleTree` takes leaf hashes one at a time and keeps O(log n) state.
`merkle_root` and `merkle_root_of_leaf_hashes` are the one-call forms. Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from .errors import MerkleError

HASH_BYTES = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data)."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


class LeafHasher:
    """The leaf hash of one member fed in chunks: `update()` as bytes arrive, then `digest()`."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256(LEAF_PREFIX)

    def update(self, chunk: bytes) -> None:
        self._sha.update(chunk)

    def digest(self) -> bytes:
        return self._sha.digest()


class MerkleTree:
    """Builds MTH from leaf hashes added in order. The stack holds the roots of the complete subtrees seen
    so far (sizes strictly decreasing powers of two), which is RFC 6962's left-heavy split read
    left to right."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []  # (leaf count, subtree hash)
        self.size = 0

    def add_leaf_hash(self, digest: bytes) -> None:
        if len(digest) != HASH_BYTES:
            raise ValueError(f"a leaf hash is {HASH_BYTES} bytes, not {len(digest)}")
        count, current = 1, bytes(digest)
        while self._stack and self._stack[-1][0] == count:
            left_count, left = self._stack.pop()
            count, current = left_count + count, node_hash(left, current)
        self._stack.append((count, current))
        self.size += 1

    def add_leaf(self, data: bytes) -> None:
        self.add_leaf_hash(leaf_hash(data))

    def root(self) -> bytes:
        """MTH of the leaves added so far (the tree stays usable)."""
        if not self._stack:
            return EMPTY_ROOT
        current = self._stack[-1][1]
        for _count, left in reversed(self._stack[:-1]):
            current = node_hash(left, current)
        return current


def merkle_root_of_leaf_hashes(leaf_hashes: Iterable[bytes]) -> bytes:
    """MTH of a tree given its leaf hashes (each SHA-256(0x00 || data)) in order."""
    tree = MerkleTree()
    for digest in leaf_hashes:
        tree.add_leaf_hash(digest)
    return tree.root()


def merkle_root(leaves: Iterable[bytes]) -> bytes:
    """MTH of a tree given its leaves' raw bytes in order."""
    return merkle_root_of_leaf_hashes(leaf_hash(data) for data in leaves)


def verify_merkle_root(leaf_hashes: Iterable[bytes], expected_hex: str) -> bytes:
    """Return the root when it equals `expected_hex` (lower-case hex); MerkleError merkle:root-mismatch
    otherwise."""
    root = merkle_root_of_leaf_hashes(leaf_hashes)
    if root.hex() != expected_hex:
        raise MerkleError("root-mismatch", f"the members' Merkle root is {root.hex()}, but the manifest says "
                          f"{expected_hex[:80]}; the bundle was altered or is damaged")
    return root

"""The VISTA summary cache (Chen et al. 2025 keep stage-1 summaries, quantized, in a key-value
store and refresh them periodically): an embedded store of Arrow IPC segments plus a sorted index.

Why Arrow IPC (pyarrow, already a dependency) and not LanceDB or DuckDB: the access pattern is a
point lookup of a few hundred users' fixed-size rows; an uncompressed Arrow file is memory-mapped
and its fixed-size columns are read as numpy views, so a lookup is a binary search in the index
plus a gather, with no decoding, no server and no new heavy dependency. Parquet would need its
pages decoded per read; a database would bring a query engine we do not use.

Layout of a cache directory::

    manifest.json              format, model version, sizes, quantization, segments, index file
    segments/seg-NNNNN.arrow   one record batch: user, q (int8 k*D or float32), scale (k),
                               state (float32 H*dh*dh), count, last_ts
    index-NNNNN.arrow          user -> (segment, row), sorted by user: the latest row wins

A refresh appends a segment with the refreshed users and writes a new index and manifest; every
file is written to a temporary name and renamed, the manifest last, so a reader sees the old
cache or the new one. :meth:`SummaryCache.compact` rewrites the live rows into one segment.
The serving path (:meth:`SummaryCache.get`) reads only ``q`` and ``scale``: never the raw
history, and not even the stage-1 state kept for refreshes. A cache belongs to one
model version (:func:`rotelab.recsys.model.model_version`); opened for another, it is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from rotelab.errors import RotelabError
from rotelab.recsys.model import Vista, model_version

__all__ = ["SummaryCache", "dequantize", "quantize"]

FORMAT = 1
QUANTS = ("int8", "float32")


def quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per token: (..., k, D) float -> (..., k, D) int8 and (..., k) scales."""
    scale = np.abs(x).max(axis=-1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(x / scale[..., None]), -127, 127).astype(np.int8)
    return q, scale


def dequantize(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * scale[..., None]


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_arrow(path: Path, table: pa.Table) -> None:
    def write(tmp: Path) -> None:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=max(table.num_rows, 1))

    _atomic_write(path, write)


def _read_arrow(path: Path) -> pa.Table:
    # memory-mapped: only the buffers a lookup touches are paged in
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all().combine_chunks()


def _fixed(column: pa.ChunkedArray, dtype, width: int) -> np.ndarray:
    """A fixed-size binary/list column as a zero-copy (rows, width) numpy view."""
    arr = column.chunk(0) if column.num_chunks else pa.array([], type=column.type)
    if pa.types.is_fixed_size_binary(arr.type):
        buf = arr.buffers()[1]
    else:
        buf = arr.values.buffers()[1]
    n = len(arr)
    return np.frombuffer(buf, dtype=dtype, count=n * width, offset=arr.offset * width *
                         np.dtype(dtype).itemsize).reshape(n, width)  # fmt: skip


class SummaryCache:
    """An embedded store of VISTA summaries, opened for one model version.

    Example:
        >>> cache = SummaryCache.create("cache", model)  # doctest: +SKIP
        >>> cache.refresh(model, {"u1": (items, timestamps)})  # doctest: +SKIP
        >>> summaries, found = SummaryCache.open("cache", model_version(model)).get(["u1"])
    """

    def __init__(self, path: Path, manifest: dict) -> None:
        self.path = path
        self.manifest = manifest
        self.k, self.dim = manifest["seeds"], manifest["dim"]
        self.state_width = manifest["state_width"]
        self._segments: dict[int, pa.Table] = {}
        self._load_index()

    # -------------------------------------------------------------------------------- open/create
    @classmethod
    def create(cls, path: str | os.PathLike, model: Vista, quant: str = "int8") -> SummaryCache:
        """An empty cache for ``model`` at ``path`` (refused if something is there)."""
        if quant not in QUANTS:
            raise RotelabError(f"quantization must be one of {', '.join(QUANTS)}, got {quant!r}")
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise RotelabError(f"{path} exists and is not empty; pass a new cache directory")
        (path / "segments").mkdir(parents=True, exist_ok=True)
        cfg = model.cfg
        manifest = {
            "format": FORMAT, "model_version": model_version(model), "seeds": cfg.seeds,
            "dim": cfg.dim, "state_width": cfg.heads * (cfg.dim // cfg.heads) ** 2,
            "quant": quant, "segments": [], "index": None,
        }  # fmt: skip
        _atomic_write(path / "manifest.json", lambda t: t.write_text(json.dumps(manifest)))
        return cls(path, manifest)

    @classmethod
    def open(cls, path: str | os.PathLike, version: str) -> SummaryCache:
        """Open a cache built by the model of ``version``; another version is refused."""
        path = Path(path)
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except FileNotFoundError:
            raise RotelabError(f"{path} is not a summary cache (no manifest.json)") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise RotelabError(f"cannot read {path}/manifest.json: {exc}") from None
        if manifest.get("format") != FORMAT:
            raise RotelabError(f"{path}: cache format {manifest.get('format')} is not {FORMAT}")
        if manifest["model_version"] != version:
            raise RotelabError(
                f"{path} was built by model version {manifest['model_version']}, not {version}; "
                "rebuild the cache with this model (rotelab recsys train writes one)"
            )
        return cls(path, manifest)

    # ------------------------------------------------------------------------------------- index
    def _load_index(self) -> None:
        name = self.manifest["index"]
        if name is None:
            self._users = np.array([], dtype=object)
            self._seg = np.array([], dtype=np.int32)
            self._row = np.array([], dtype=np.int64)
            return
        t = _read_arrow(self.path / name)
        self._users = np.asarray(t.column("user").to_pylist(), dtype=object)
        self._seg = t.column("segment").to_numpy()
        self._row = t.column("row").to_numpy()

    def __len__(self) -> int:
        return len(self._users)

    def __contains__(self, user: object) -> bool:
        return bool(self._locate([str(user)])[0] >= 0)

    def users(self) -> list[str]:
        return list(self._users)

    def _locate(self, users: list[str]) -> np.ndarray:
        """Positions in the index of ``users`` (-1 where absent)."""
        keys = np.asarray(users, dtype=object)
        pos = np.searchsorted(self._users, keys) if len(self._users) else np.zeros(len(keys), int)
        pos = np.minimum(pos, max(len(self._users) - 1, 0))
        hit = (pos < len(self._users)) & (self._users[pos] == keys) if len(self._users) else (
            np.zeros(len(keys), bool))  # fmt: skip
        return np.where(hit, pos, -1)

    def _segment(self, i: int) -> pa.Table:
        if i not in self._segments:
            self._segments[i] = _read_arrow(self.path / "segments" / self.manifest["segments"][i])
        return self._segments[i]

    def _gather(self, users: list[str], column: str, width: int, dtype) -> tuple[np.ndarray, ...]:
        at = self._locate(users)
        out = np.zeros((len(users), width), dtype=dtype)
        for seg in np.unique(self._seg[at[at >= 0]]):
            pick = np.flatnonzero((at >= 0) & (self._seg[np.maximum(at, 0)] == seg))
            out[pick] = _fixed(self._segment(int(seg)).column(column), dtype, width)[
                self._row[at[pick]]]  # fmt: skip
        return out, at >= 0

    # ----------------------------------------------------------------------------------- serving
    def get(self, users: Iterable[object]) -> tuple[np.ndarray, np.ndarray]:
        """The serving path: (U, k, D) float32 summaries and a (U,) found mask (zeros where not).

        Reads the ``q`` and ``scale`` columns only."""
        users = [str(u) for u in users]
        k, d = self.k, self.dim
        if self.manifest["quant"] == "int8":
            q, found = self._gather(users, "q", k * d, np.int8)
            scale, _ = self._gather(users, "scale", k, np.float32)
            return dequantize(q.reshape(-1, k, d), scale), found
        q, found = self._gather(users, "q", k * d, np.float32)
        return q.reshape(-1, k, d), found

    def states(self, users: Iterable[object]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(U, state_width) stage-1 sums, (U,) counts and (U,) last timestamps (0 where absent)."""
        users = [str(u) for u in users]
        state, found = self._gather(users, "state", self.state_width, np.float32)
        count, _ = self._gather(users, "count", 1, np.int64)
        last, _ = self._gather(users, "last_ts", 1, np.int64)
        last = np.where(found, last[:, 0], np.iinfo(np.int64).min)
        return state, count[:, 0], last

    # ----------------------------------------------------------------------------------- writing
    def put(
        self,
        users: list[object],
        summaries: np.ndarray,
        states: np.ndarray,
        counts: np.ndarray,
        last_ts: np.ndarray,
    ) -> None:
        """Write rows (a new segment) and make them the ones served for these users."""
        users = [str(u) for u in users]
        if len(set(users)) != len(users):
            raise ValueError("duplicate users in one write")
        n, k, d = len(users), self.k, self.dim
        if self.manifest["quant"] == "int8":
            q, scale = quantize(summaries.astype(np.float32))
            q_col = pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(k * d), n, [None, pa.py_buffer(np.ascontiguousarray(q).tobytes())]
            )
        else:
            scale = np.ones((n, k), np.float32)
            q_col = _fixed_list(summaries.astype(np.float32).reshape(n, k * d))
        table = pa.table({
            "user": pa.array(users, pa.string()), "q": q_col, "scale": _fixed_list(scale),
            "state": _fixed_list(states.astype(np.float32).reshape(n, -1)),
            "count": _fixed_list(np.asarray(counts, np.int64).reshape(n, 1)),
            "last_ts": _fixed_list(np.asarray(last_ts, np.int64).reshape(n, 1)),
        })  # fmt: skip
        seg_no = len(self.manifest["segments"])
        seg_name = f"seg-{seg_no:05d}.arrow"
        _write_arrow(self.path / "segments" / seg_name, table)
        # the new index: old entries for other users, then the new rows; sorted by user
        keep = self._locate(users)
        mask = np.ones(len(self._users), bool)
        mask[keep[keep >= 0]] = False
        all_users = np.concatenate([self._users[mask], np.asarray(users, dtype=object)])
        all_seg = np.concatenate([self._seg[mask], np.full(n, seg_no, np.int32)])
        all_row = np.concatenate([self._row[mask], np.arange(n, dtype=np.int64)])
        order = np.argsort(all_users, kind="stable")
        index_name = f"index-{seg_no:05d}.arrow"
        _write_arrow(self.path / index_name, pa.table({
            "user": pa.array(list(all_users[order]), pa.string()),
            "segment": pa.array(all_seg[order], pa.int32()),
            "row": pa.array(all_row[order], pa.int64()),
        }))  # fmt: skip
        old_index = self.manifest["index"]
        manifest = {**self.manifest, "segments": [*self.manifest["segments"], seg_name],
                    "index": index_name}  # fmt: skip
        _atomic_write(self.path / "manifest.json", lambda t: t.write_text(json.dumps(manifest)))
        self.manifest = manifest
        if old_index is not None:
            (self.path / old_index).unlink(missing_ok=True)
        self._load_index()

    def compact(self) -> None:
        """Rewrite the live rows into one segment and delete the others (refreshes append a
        segment each; the rows they replaced stay on disk until this)."""
        if sum(n is not None for n in self.manifest["segments"]) <= 1:
            return
        users = self.users()
        k, d = self.k, self.dim
        if self.manifest["quant"] == "int8":
            q, _ = self._gather(users, "q", k * d, np.int8)
            scale, _ = self._gather(users, "scale", k, np.float32)
            summaries = dequantize(q.reshape(-1, k, d), scale)  # requantizes to the same bytes
        else:
            summaries, _ = self.get(users)
        states, counts, last = self.states(users)
        old = [n for n in self.manifest["segments"] if n is not None]
        self.put(users, summaries, states, counts, last)
        # segment numbers stay (the index refers to them); dropped ones become None
        segments = [None] * (len(self.manifest["segments"]) - 1) + self.manifest["segments"][-1:]
        manifest = {**self.manifest, "segments": segments}
        _atomic_write(self.path / "manifest.json", lambda t: t.write_text(json.dumps(manifest)))
        self.manifest = manifest
        for name in old:
            (self.path / "segments" / name).unlink(missing_ok=True)

    @torch.no_grad()
    def refresh(
        self,
        model: Vista,
        new: Mapping[object, tuple[Iterable[np.ndarray], tuple[int, int]]],
    ) -> int:
        """Fold new history items into the cached state of each user and rewrite its summary.

        Costs O(new items): the old history is not read again (the stage-1 state is a sum).

        Args:
            model: the model the cache was built by (its version is checked).
            new: user -> (chunks of new item ids, oldest first; the (first, last) timestamps
                of the new items). A user not in the cache starts from an empty history. A first
                new timestamp before the cached last one is refused (events out of order).

        Returns:
            The number of users written.
        """
        if model_version(model) != self.manifest["model_version"]:
            raise RotelabError(
                f"{self.path} was built by model version {self.manifest['model_version']}, "
                f"not {model_version(model)}; rebuild the cache with this model"
            )
        users = list(new)
        state, count, last = self.states(users)
        heads, dh = model.cfg.heads, model.cfg.dim // model.cfg.heads
        out_state, out_count, out_last, summaries = [], [], [], []
        for i, user in enumerate(users):
            chunks, (first_ts, final_ts) = new[user]
            if first_ts < last[i]:
                raise RotelabError(
                    f"user {user!r}: new events start at {first_ts}, before the cached history "
                    f"ends ({last[i]}); refresh with events in time order"
                )
            s, n = model.fold_stream(chunks)
            s = s + torch.as_tensor(state[i]).view(1, heads, dh, dh)
            n = n + float(count[i])
            summaries.append(model.stage1.summarize(s, n)[0].numpy())
            out_state.append(s.reshape(-1).numpy())
            out_count.append(int(n))
            out_last.append(max(final_ts, int(last[i])))
        self.put(users, np.stack(summaries), np.stack(out_state), np.array(out_count),
                 np.array(out_last))  # fmt: skip
        return len(users)


def _fixed_list(a: np.ndarray) -> pa.FixedSizeListArray:
    a = np.ascontiguousarray(a)
    return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), a.shape[1])

"""R members of one MDN architecture as a single LightningModule.

The members share the family and the scalers; each has its own weights (a ``BatchedMLP``)
and, optionally, its own row weights (a bootstrap refit is a member whose rows carry
multinomial counts). By default they share the data too; with ``stacked=True`` each member has
its own rows, x (R, n, d) and y (R, n, *event), so that the replicate fits of a simulation
study (replicates x restarts) train as one network. The training loss is the sum over members of each member's
penalized objective. Adam is elementwise, so Adam on that sum is R independent Adams: member r
follows exactly the path it would follow alone from the same initial weights.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from mdnlab.distributed import sum_over_processes
from mdnlab.errors import TrainingError
from mdnlab.estimation.members import BatchedMLP


class MemberEnsemble(pl.LightningModule):
    def __init__(
        self,
        template,
        members: BatchedMLP,
        n_train: int,
        penalty: float = 0.0,
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        row_weights: torch.Tensor | None = None,
        stacked: bool = False,
        scale_penalty: float = 0.0,
    ):
        super().__init__()
        # The template MDNModule lends its family and fitted scalers; it is not trained here.
        self.family = template.family
        self.x_scaler, self.y_scaler = template.x_scaler, template.y_scaler
        self.members = members
        self.n_train, self.penalty = int(n_train), float(penalty)
        self.scale_penalty = float(scale_penalty)  # c of (c / n) mean_i s(x_i)
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.row_weights = row_weights  # (R, n_train) or None: every row counts once
        self.stacked = bool(stacked)  # True: x (R, n, d), y (R, n, *event), member r's own rows
        # Buffers, so that they follow the module to an accelerator; not in the state_dict
        # (checkpoints carry them in ``bookkeeping``).
        self.register_buffer("alive", torch.ones(members.n_members, dtype=torch.bool), False)
        self.register_buffer("scale_reference", template.scale_reference.clone(), False)
        # Members still training: alive and not yet out of patience (the early-stopping
        # callback clears them). The others are left out of the forward pass: their restored
        # best weights do not depend on what happens to them afterwards.
        self.register_buffer(
            "training_mask", torch.ones(members.n_members, dtype=torch.bool), False
        )
        self.epoch_history: dict[str, list[list[float]]] = {"train": [], "val": []}
        self.last_val: torch.Tensor | None = None
        self._sums: dict[str, list] = {}

    @property
    def n_members(self) -> int:
        return self.members.n_members

    # --- checkpoints (mdnlab.estimation.checkpoints) -------------------------------------------
    def bookkeeping(self) -> dict:
        """What a resumed fit needs besides the weights: plain values and CPU tensors. A
        checkpoint callback runs before this module's own end-of-epoch hook, so an epoch's
        training NLL still being summed is closed here."""
        history = {stage: list(epochs) for stage, epochs in self.epoch_history.items()}
        if "train" in self._sums:
            total, count = self._sums["train"]
            history["train"].append([float(v) for v in total / count])
        return {
            "alive": self.alive.cpu(),
            "training_mask": self.training_mask.cpu(),
            "epoch_history": history,
            "last_val": None if self.last_val is None else self.last_val.cpu(),
        }

    def restore_bookkeeping(self, state: dict) -> None:
        self.alive.copy_(state["alive"])
        self.training_mask.copy_(state["training_mask"])
        self.epoch_history = {k: [list(e) for e in v] for k, v in state["epoch_history"].items()}
        last = state["last_val"]
        self.last_val = None if last is None else last.to(self.alive.device)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mdnlab_bookkeeping"] = self.bookkeeping()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.restore_bookkeeping(checkpoint["mdnlab_bookkeeping"])

    def rows_of(self, x: torch.Tensor, y: torch.Tensor, members=None):
        """The data of the listed members (all when None): (x, y) itself unless ``stacked``."""
        if not self.stacked or members is None:
            return x, y
        return x[members], y[members]

    def log_prob(self, x: torch.Tensor, y: torch.Tensor, theta=None, members=None) -> torch.Tensor:
        """(R, n) log q_r(y_i | x_i) in nats, original units of y (at ``theta`` (M, P) if given,
        the parameters of the members listed in ``members``: their own rows when stacked)."""
        return self.row_terms(x, y, theta, members)[0]

    def row_terms(self, x, y, theta=None, members=None, scale: bool = False):
        """(R, n) log q_r(y_i | x_i) and, with ``scale``, the (R, n) scale penalty s_r(x_i)
        (else None), from one pass through the members."""
        x, y = self.rows_of(x, y, members)
        raw = self.members(self.x_scaler(x), theta)  # (R, n, n_raw)
        r, n = raw.shape[:2]
        y_s = self.y_scaler(y)
        if self.stacked:
            y_rep = y_s.reshape(r * n, *y_s.shape[2:])
        else:
            y_rep = y_s.expand(r, *y_s.shape).reshape(r * n, *y_s.shape[1:])
        raw = raw.reshape(r * n, -1)
        log_q = self.family.mixture(raw).log_prob(y_rep).reshape(r, n)
        penalty = None
        if scale:
            penalty = self.family.scale_penalty(raw, self.scale_reference).reshape(r, n)
        return log_q + self.y_scaler.log_abs_det_jacobian(), penalty

    @staticmethod
    def row_mean(values: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(R,) mean over rows of (R, n) values; with ``rows`` (R, n) weights, a weighted mean."""
        if rows is None:
            return values.mean(dim=1)
        return (values * rows).sum(dim=1) / rows.sum(dim=1)

    def data_terms(self, x, y, rows=None, theta=None, members=None, scale: bool = True):
        """(R,) mean NLL and (R,) scale-penalty term (c / n) mean_i s(x_i) (None when c = 0
        or not ``scale``)."""
        log_q, scale = self.row_terms(
            x, y, theta, members, scale=scale and bool(self.scale_penalty)
        )
        nll = -self.row_mean(log_q, rows)
        if scale is None:
            return nll, None
        return nll, self.scale_penalty / self.n_train * self.row_mean(scale, rows)

    def nll(self, x, y, rows=None, theta=None, members=None) -> torch.Tensor:
        """(R,) mean NLL of each member; with ``rows`` (R, n) weights, a weighted mean."""
        return -self.row_mean(self.log_prob(x, y, theta, members), rows)

    def penalty_terms(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """(R,) lambda / (2 n_train) * |theta_r|^2."""
        squares = self.members.squared_norms() if theta is None else theta.pow(2).sum(dim=1)
        return self.penalty / (2.0 * self.n_train) * squares

    def objective(self, x, y, theta=None, members=None) -> torch.Tensor:
        """Penalized objective of each member on (x, y), (R,); with ``theta`` (M, P) the rows
        of the members listed in ``members`` (all when None) at those parameters."""
        rows = self.row_weights
        if rows is not None and members is not None:
            rows = rows[members]
        value, scale = self.data_terms(x, y, rows, theta, members)
        if scale is not None:
            value = value + scale
        return value + self.penalty_terms(theta) if self.penalty else value

    # --- Lightning -----------------------------------------------------------------------------
    def _training_nll(self, x, y, rows=None, with_scale: bool = True):
        """(R,) mean NLL of the members still training, NaN for the others, and their (R,)
        scale-penalty terms (0 for the others; None when there is no scale penalty)."""
        if bool(self.training_mask.all()):
            return self.data_terms(x, y, rows, scale=with_scale)
        index = torch.nonzero(self.training_mask).flatten()
        part, scale = self.data_terms(
            x,
            y,
            None if rows is None else rows[index],
            self.members.flat()[index],
            index,
            with_scale,
        )
        full = torch.full((self.n_members,), float("nan"), dtype=part.dtype, device=part.device)
        if scale is not None:
            scale = torch.zeros_like(full).index_put((index,), scale)
        return full.index_put((index,), part), scale

    def _shard(self, x, y, rows=None):
        """Under DDP, this process's rows (every W-th from its rank) and the factor that makes
        the mean of the processes' losses (DDP averages their gradients) the full-data one."""
        world = self.trainer.world_size if self._trainer is not None else 1
        if world == 1 or self.stacked or rows is not None:
            return x, y, 1.0
        rank = self.trainer.global_rank
        x_own, y_own = x[rank::world], y[rank::world]
        return x_own, y_own, x_own.shape[0] * world / x.shape[0]

    def training_step(self, batch, batch_idx):
        x, y = batch[:2]
        rows = batch[2] if len(batch) > 2 else None
        x, y, scale = self._shard(x, y, rows)
        nll, scale_terms = self._training_nll(x, y, rows)
        finite = torch.isfinite(nll)
        # every process must see a divergence anywhere, or the others wait for it forever
        bad = sum_over_processes((~finite & self.training_mask).to(torch.int64)) > 0
        if bool(bad.any()):
            self._diverged(bad, "train")
        keep = self.training_mask
        loss = torch.where(keep, nll * scale, torch.zeros_like(nll))
        self._accumulate("train", nll.detach(), x.shape[0])
        if self.penalty:
            loss = loss + torch.where(keep, self.penalty_terms(), torch.zeros_like(nll))
        if scale_terms is not None:
            loss = loss + torch.where(keep, scale_terms * scale, torch.zeros_like(nll))
        return loss.sum()

    def validation_step(self, batch, batch_idx):
        x, y, _ = self._shard(*batch[:2])
        nll = self._training_nll(x, y, with_scale=False)[0]  # validation: the NLL alone
        self._accumulate("val", nll.detach(), x.shape[0])

    def _diverged(self, bad: torch.Tensor, stage: str) -> None:
        members = [int(r) for r in torch.nonzero(bad).flatten()]
        if int(self.alive.sum()) == len(members):
            which = "" if self.n_members == 1 else f" (member(s) {members})"
            raise TrainingError(
                f"{stage} NLL became non-finite at epoch {self.current_epoch}{which}; "
                "lower trainer.lr or raise model.min_scale"
            )
        self.alive[bad] = False  # the others go on; this member keeps its best weights so far
        self.training_mask[bad] = False

    def _accumulate(self, stage: str, nll: torch.Tensor, rows: int) -> None:
        total, count = self._sums.get(stage, (torch.zeros_like(nll), 0))
        self._sums[stage] = (total + nll * rows, count + rows)

    def _close_epoch(self, stage: str) -> torch.Tensor | None:
        if stage not in self._sums:
            return None
        total, count = self._sums.pop(stage)
        count = sum_over_processes(
            torch.tensor(float(count), dtype=total.dtype, device=total.device)
        )
        value = sum_over_processes(total) / count
        self.epoch_history[stage].append([float(v) for v in value])
        return value

    def on_train_epoch_end(self) -> None:
        self._close_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self.last_val = self._close_epoch("val")

    def configure_optimizers(self):
        return torch.optim.Adam(
            self.members.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )

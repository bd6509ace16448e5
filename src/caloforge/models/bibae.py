"""Bounded Information Bottleneck Autoencoder with post-processor and latent KDE (seed 001,
Sec. 3.2; "Getting High" and "Decoding Photons").

Training, phase ``bibae`` (eq. 2-5 of seed 001)::

    L = - beta_CL * E[C_L(E(x))]          latent critic
        - beta_C  * E[C(x, D(E(x)))]      critic on the reconstruction
        + beta_KLD * KLD(E(x))            latent regularisation
        + beta_MMD * MMD(E(x), N(0, 1))

- ``C`` sees the pair (input, candidate): (x, x) is "real", (x, D(E(x))) "fake", so it
  judges realism and faithfulness of the reconstruction at once; it uses minibatch
  discrimination (sums and widths of the un-scaled and log-scaled inputs).
- Every critic is a pair of identical networks: one trained continuously, one whose
  weights and optimiser state are reset after every ``reset_every`` epochs.
- ``beta_recon`` adds a pixel-wise MSE (not part of eq. 2-5; 0 by default, the tiny preset
  uses it to converge in a few steps).
- ``network_threshold_mip`` (0.1 by default, as in seed 001 Sec. 3.2): every cell of the
  decoder's and of the post-processor's output below this fraction of the geometry's MIP
  is set to 0, in training and in generation alike, so the post-processor learns on the
  sparse showers it is given when generating; 0 switches it off.

Phase ``postprocessor``: the encoder/decoder are frozen; a small 3-D convolutional
post-processor refines the decoded showers with MSE, two sorted-kernel MMD terms (small and
large kernel) on the sorted cell energies, a sorted hit-energy loss and an average-shower
loss.  After training, the encoded training showers and their energy labels are stored
and a KDE (product Gaussian kernels, Scott bandwidth) is sampled for generation; a
requested energy is met by rejection sampling on the energy label.

Angle-conditioned models (config ``conditions: [theta, phi]``, seed 000): the direction
is an input of the encoder, decoder, critics and post-processor, and the latent KDE is
replaced by a conditional spline flow (zuko) fitted on the encoded training showers.

>>> model = BIBAE.from_config(None, "ild-ecal", preset="tiny")
>>> [name for name, _ in model.phases()]
['bibae', 'postprocessor']
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from caloforge.data.batch import Conditions
from caloforge.errors import ConfigError
from caloforge.geometry import Geometry
from caloforge.models.base import GenerativeModel, StepContext, TrainBatch, register, seeded
from caloforge.models.config import ModelConfig, positive
from caloforge.models.flows import sample_flow, spline_coupling_flow
from caloforge.models.nets import Critic3d, GridDecoder, GridEncoder, gradient_penalty, mlp
from caloforge.models.nets import reset_parameters as _reset
from caloforge.models.noise import ShowerNoise, Source, rand, randint, randn, subset
from caloforge.models.transforms import Compose, LogTransform, ScaleByIncident


@dataclass
class BIBAEConfig(ModelConfig):
    latent_dim: int = 24
    enc_channels: tuple[int, ...] = (16, 32, 64)
    dec_channels: tuple[int, ...] = (64, 32, 16)
    critic_channels: tuple[int, ...] = (16, 32, 64)
    critic_hidden: int = 128
    latent_critic_hidden: tuple[int, ...] = (128, 128)
    pp_channels: tuple[int, ...] = (16, 16)
    beta_latent_critic: float = 1.0
    beta_critic: float = 1.0
    beta_kld: float = 0.1
    beta_mmd: float = 10.0
    beta_recon: float = 0.0
    gp_weight: float = 10.0
    n_critic: int = 2  # critic updates per autoencoder update
    reset_every: int = 1  # epochs between resets of the resetting critics
    lr_ae: float = 1e-4
    lr_critic: float = 1e-4
    lr_pp: float = 1e-4
    lr_decay: float = 0.5  # learning rates fall by this factor over the whole run
    pp_fraction: float = 0.3  # share of the steps spent on the post-processor
    pp_topk: int = 400  # cell energies kept for the sorted losses
    pp_mse: float = 1.0
    pp_mmd_small: float = 1.0
    pp_mmd_large: float = 1.0
    pp_sorted: float = 1.0
    pp_mean_shower: float = 10.0
    mmd_kernel_small: float = 0.05  # widths in units of the scaled cell energy
    mmd_kernel_large: float = 0.5
    kde_points: int = 20000  # encoded training showers kept for the latent KDE
    # Models conditioned on more than the energy sample the latent space from a
    # conditional spline flow (seed 000) fitted on the encoded showers after training.
    latent_flow_transforms: int = 4
    latent_flow_hidden: tuple[int, ...] = (64, 64)
    latent_flow_steps: int = 1000
    log_eps: float = 1e-5
    threshold_output: bool = True
    # Seed 001: "during training a threshold function was used to map every value below
    # 10% of a MIP to 0".  In MIP of the geometry (models are data-agnostic); 0 = off.
    network_threshold_mip: float = 0.1

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, source: str | None = None) -> BIBAEConfig:
        data = dict(data or {})
        missing = {f.name for f in dataclasses.fields(cls)} - set(data)
        if missing == {"network_threshold_mip"}:
            # A complete config saved (model folder, checkpoint) before the threshold
            # existed: that model was trained without it, and generates without it.
            data["network_threshold_mip"] = 0.0
        return super().from_dict(data, source)

    def validate(self) -> None:
        super().validate()
        positive(self, "latent_dim", "n_critic", "reset_every", "lr_ae", "lr_critic", "lr_pp",
                 "pp_topk", "kde_points", "log_eps", "lr_decay", "latent_flow_transforms",
                 "latent_flow_steps")
        if not math.isfinite(self.network_threshold_mip) or self.network_threshold_mip < 0:
            raise ConfigError("config key 'network_threshold_mip' must be a finite number "
                              f">= 0, got {self.network_threshold_mip}")
        if not 0 < self.pp_fraction < 1:
            raise ConfigError("config key 'pp_fraction' must lie in (0, 1)")


def kld(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, sigma) || N(0, 1)) summed over latent dims, averaged over the batch."""
    return 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(1).mean()


def mmd(a: Tensor, b: Tensor, scales: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0, 5.0)) -> Tensor:
    """Maximum mean discrepancy with a sum of inverse multiquadratic kernels."""
    def k(x: Tensor, y: Tensor) -> Tensor:
        d = torch.cdist(x, y) ** 2
        dim = x.shape[1]
        return sum(s * dim / (s * dim + d) for s in scales)
    n, m = len(a), len(b)
    kaa = (k(a, a).sum() - k(a, a).diagonal().sum()) / max(n * (n - 1), 1)
    kbb = (k(b, b).sum() - k(b, b).diagonal().sum()) / max(m * (m - 1), 1)
    return kaa + kbb - 2 * k(a, b).mean()


def sorted_kernel_mmd(real_sorted: Tensor, fake_sorted: Tensor, width: float) -> Tensor:
    """Sorted-kernel MMD: for each rank of the sorted cell energies, a 1-D Gaussian-kernel
    MMD between the real and generated values across the batch, averaged over ranks."""
    def k(x: Tensor, y: Tensor) -> Tensor:  # (K, B) x (K, B) -> (K, B, B)
        return torch.exp(-0.5 * ((x[:, :, None] - y[:, None, :]) / width) ** 2)
    r, f = real_sorted.T, fake_sorted.T
    return (k(r, r).mean((1, 2)) + k(f, f).mean((1, 2)) - 2 * k(r, f).mean((1, 2))).mean()


@register("bibae")
class BIBAE(GenerativeModel):
    """BIB-AE with dual (continuous + resetting) critics, post-processor and latent KDE."""

    Config = BIBAEConfig
    presets = {
        "tiny": {"latent_dim": 4, "enc_channels": [4, 8], "dec_channels": [8, 4],
                 "critic_channels": [4, 8], "critic_hidden": 32,
                 "latent_critic_hidden": [32], "pp_channels": [8], "lr_ae": 2e-3,
                 "lr_critic": 1e-3, "lr_pp": 1e-3, "beta_recon": 10.0, "beta_critic": 0.1,
                 "beta_latent_critic": 0.1, "pp_topk": 40, "kde_points": 2000,
                 "pp_fraction": 0.2, "latent_flow_hidden": [16], "latent_flow_steps": 100,
                 # a few dozen steps leave most cells under the seed's cut (test runs)
                 "network_threshold_mip": 0.0},
    }
    requires_regular_grid = True
    condition_inputs = ("theta", "phi")

    def __init__(self, config: BIBAEConfig, geometry: Geometry) -> None:
        super().__init__(config, geometry)
        grid = self.grid_shape
        c = config
        self.transform = Compose(ScaleByIncident(), LogTransform(c.log_eps))
        n_c = self.n_conditions  # energy (+ direction): input of every network
        self.encoder = GridEncoder(grid, 1, c.enc_channels, n_c)
        self.to_latent = nn.Linear(self.encoder.out_features, 2 * c.latent_dim)
        self.decoder = GridDecoder(c.latent_dim, grid, c.dec_channels, n_c)
        self.critics = nn.ModuleDict({
            name: Critic3d(grid, 2, c.critic_channels, c.critic_hidden, minibatch=True, cond=n_c)
            for name in ("critic", "critic_reset")})
        self.latent_critics = nn.ModuleDict({
            name: mlp([c.latent_dim + n_c, *c.latent_critic_hidden, 1])
            for name in ("latent_critic", "latent_critic_reset")})
        chans = [1 + n_c, *c.pp_channels]
        pp: list[nn.Module] = []
        for i in range(len(chans) - 1):
            pp += [nn.Conv3d(chans[i], chans[i + 1], 3, padding=1), nn.LeakyReLU(0.2)]
        pp.append(nn.Conv3d(chans[-1], 1, 3, padding=1))
        self.postprocessor = nn.Sequential(*pp)
        # Latent KDE: encoded training showers + their condition (energy label last
        # for energy-only models; the latent flow's training set for angle models).
        self.register_buffer("kde_points", torch.zeros(c.kde_points, c.latent_dim + n_c))
        self.register_buffer("kde_bandwidth", torch.ones(c.latent_dim + n_c))
        self.register_buffer("kde_count", torch.zeros((), dtype=torch.long))
        if self.takes_angles:
            self.latent_flow = spline_coupling_flow(c.latent_dim, n_c, c.latent_flow_transforms,
                                                    8, tuple(c.latent_flow_hidden))

    # ---- pieces ----------------------------------------------------------------------------
    def fit_preprocessing(self, x: Tensor, e_inc: Tensor, angles: Tensor | None = None) -> None:
        super().fit_preprocessing(x, e_inc)
        self.transform.fit(x, e_inc)

    def encode(self, y: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        h = self.to_latent(self.encoder(y, c))
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(-10, 10)

    def decode(self, z: Tensor, c: Tensor) -> Tensor:
        return torch.relu(self.decoder(z, c))[:, None]

    def postprocess(self, y: Tensor, c: Tensor) -> Tensor:
        inp = torch.cat([y, c[:, :, None, None, None].expand(-1, -1, *y.shape[2:])], 1)
        return torch.relu(y + self.postprocessor(inp))

    def threshold(self, y: Tensor, e_inc: Tensor) -> Tensor:
        """Network-space showers ``y`` (B, 1, *grid) with the cells below
        ``network_threshold_mip`` MIP (of the geometry) at incident energies ``e_inc`` (MeV)
        set to 0.

        The gradient passes straight through (as if no cut): in the log-scaled network
        space the cut lies far above an untrained network's output, and a plain cut would
        block every gradient from the start."""
        mip = self.config.network_threshold_mip
        if mip <= 0:
            return y
        cut_mev = torch.full_like(e_inc, mip * self.geometry.mip_mev, dtype=torch.float32)
        cut = self.transform(cut_mev[:, None], e_inc).view(-1, *([1] * (y.dim() - 1)))
        kept = torch.where(y >= cut, y, torch.zeros_like(y))
        return y + (kept - y).detach() if y.requires_grad else kept

    def showers_from_latent(self, z: Tensor, c: Tensor, e_inc: Tensor) -> Tensor:
        """Cell energies (MeV, ``(B, n_voxels)``) of latent vectors ``z`` under conditions
        ``c``: decoder, threshold, post-processor, threshold, inverse preprocessing."""
        rec = self.threshold(self.decode(z, c), e_inc)
        y = self.threshold(self.postprocess(rec, c), e_inc).flatten(1).float()
        return self.transform.inverse(y, e_inc)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        ae = [*self.encoder.parameters(), *self.to_latent.parameters(),
              *self.decoder.parameters()]
        opts = {"ae": torch.optim.Adam(ae, c.lr_ae, betas=(0.5, 0.9)),
                "postprocessor": torch.optim.Adam(self.postprocessor.parameters(), c.lr_pp)}
        for name, net in [*self.critics.items(), *self.latent_critics.items()]:
            opts[name] = torch.optim.Adam(net.parameters(), c.lr_critic, betas=(0.5, 0.9))
        return opts

    def configure_schedulers(self, optimizers, total_steps):  # noqa: ANN001, ANN201
        # Exponential decay by ``lr_decay`` over the run (seed 001 uses exponential decay).
        gamma = self.config.lr_decay ** (1.0 / max(total_steps, 1))
        return {k: torch.optim.lr_scheduler.ExponentialLR(o, gamma) for k, o in optimizers.items()}

    def phases(self) -> list[tuple[str, float]]:
        f = self.config.pp_fraction
        return [("bibae", 1 - f), ("postprocessor", f)]

    # ---- training ---------------------------------------------------------------------------
    def training_step(self, batch: TrainBatch, phase: str, ctx: StepContext) -> dict[str, float]:
        c = self.condition_features(batch.e_inc, batch.angles)
        y = self.transform(batch.x, batch.e_inc).view(len(c), 1, *self.grid_shape)
        if phase == "postprocessor":
            return self._pp_step(y, c, batch.e_inc, ctx)
        cfg, gen, out = self.config, ctx.generator, {}
        with ctx.autocast():
            mu, logvar = self.encode(y, c)
            z = mu + torch.randn(mu.shape, generator=gen, device=mu.device) * (0.5 * logvar).exp()
            rec = self.threshold(self.decode(z, c), batch.e_inc).float()
        real_pair, fake_pair = torch.cat([y, y], 1), torch.cat([y, rec.detach()], 1)
        prior = torch.randn(z.shape, generator=gen, device=z.device)
        zc, pc = torch.cat([z.detach().float(), c], 1), torch.cat([prior, c], 1)
        for name, critic in self.critics.items():
            with ctx.autocast():
                w = critic(real_pair, c).float().mean() - critic(fake_pair, c).float().mean()
            gp = gradient_penalty(lambda v, cc, net=critic: net(v, cc), real_pair, fake_pair, c,
                                  gen)
            ctx.step(name, -w + cfg.gp_weight * gp)
            out[f"w_{name}"] = w.item()
        for name, critic in self.latent_critics.items():
            w = (critic(pc).mean() - critic(zc).mean()).float()
            gp = gradient_penalty(lambda v, cc, net=critic: net(v)[:, 0], pc, zc, c, gen)
            ctx.step(name, -w + cfg.gp_weight * gp)
            out[f"w_{name}"] = w.item()
        if ctx.step_index % cfg.n_critic == 0:
            self.critics.requires_grad_(False)
            self.latent_critics.requires_grad_(False)
            with ctx.autocast():
                fake_pair = torch.cat([y, rec], 1)
                adv = -sum(cr(fake_pair, c).float().mean() for cr in self.critics.values())
                zc = torch.cat([z.float(), c], 1)
                adv_l = -sum(cr(zc).float().mean() for cr in self.latent_critics.values())
            loss_kld = kld(mu.float(), logvar.float())
            loss_mmd = mmd(z.float(), prior)
            loss = (cfg.beta_critic * adv + cfg.beta_latent_critic * adv_l
                    + cfg.beta_kld * loss_kld + cfg.beta_mmd * loss_mmd)
            if cfg.beta_recon:
                loss = loss + cfg.beta_recon * nn.functional.mse_loss(rec, y)
            ctx.step("ae", loss)
            self.critics.requires_grad_(True)
            self.latent_critics.requires_grad_(True)
            out.update(ae=loss.item(), kld=loss_kld.item(), mmd=loss_mmd.item())
        return out

    def _pp_step(self, y: Tensor, c: Tensor, e_inc: Tensor,
                 ctx: StepContext) -> dict[str, float]:
        cfg = self.config
        with torch.no_grad():  # the BIB-AE is frozen while the post-processor trains
            mu, logvar = self.encode(y, c)
            z = mu + torch.randn(mu.shape, generator=ctx.generator,
                                 device=mu.device) * (0.5 * logvar).exp()
            rec = self.threshold(self.decode(z, c), e_inc)
        with ctx.autocast():
            pp = self.threshold(self.postprocess(rec, c), e_inc).float()
        k = min(cfg.pp_topk, pp[0].numel())
        # Sorted losses act on the linear (not log) scaled cell energies.
        lin_r = torch.expm1(y.flatten(1) + math.log(cfg.log_eps)) / cfg.log_eps
        lin_p = torch.expm1(pp.flatten(1) + math.log(cfg.log_eps)) / cfg.log_eps
        scale = lin_r.amax().clamp_min(1e-12)
        sr = torch.topk(lin_r / scale, k, dim=1).values
        sp = torch.topk(lin_p / scale, k, dim=1).values
        terms = {
            "pp_mse": nn.functional.mse_loss(pp, y),
            "pp_mmd_small": sorted_kernel_mmd(sr, sp, cfg.mmd_kernel_small),
            "pp_mmd_large": sorted_kernel_mmd(sr, sp, cfg.mmd_kernel_large),
            "pp_sorted": (sp - sr).abs().mean(),
            "pp_mean_shower": nn.functional.mse_loss(pp.mean(0), y.mean(0)),
        }
        loss = sum(getattr(cfg, k) * v for k, v in terms.items())
        ctx.step("postprocessor", loss)
        return {k: v.item() for k, v in terms.items()}

    def on_epoch_end(self, epoch: int, ctx: StepContext) -> None:
        if (epoch + 1) % self.config.reset_every:
            return
        # Seeded from the epoch: a resumed run resets to exactly the same weights.
        with seeded(int(ctx.generator.initial_seed()) % (2 ** 31) + epoch):
            _reset(self.critics["critic_reset"])
            _reset(self.latent_critics["latent_critic_reset"])
        ctx.reset_optimizer("critic_reset")
        ctx.reset_optimizer("latent_critic_reset")

    @torch.no_grad()
    def finalize(self, x: Tensor, e_inc: Tensor, generator: torch.Generator,
                 angles: Tensor | None = None) -> None:
        """Encode (up to ``kde_points``) training showers and fit the latent KDE (or the
        conditional latent flow of a model that takes angles)."""
        was = self.training
        self.eval()
        n = min(len(x), self.config.kde_points)
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n]
        points = []
        for i in range(0, n, 256):
            sel = idx[i:i + 256]
            xb, eb = x[sel].to(self.device), e_inc[sel].to(self.device)
            c = self.condition_features(eb, None if angles is None else angles[sel].to(eb))
            y = self.transform(xb, eb).view(len(c), 1, *self.grid_shape)
            mu, _ = self.encode(y, c)
            points.append(torch.cat([mu, c], 1))
        pts = torch.cat(points)
        self.kde_points.zero_()
        self.kde_points[:n] = pts
        self.kde_count.fill_(n)
        # Scott's rule per dimension: sigma * n^(-1/(d+4)).
        d = pts.shape[1]
        std = pts.std(0).clamp_min(1e-3) if n > 1 else torch.ones(d, device=pts.device)
        self.kde_bandwidth.copy_(std * n ** (-1.0 / (d + 4)))
        if self.takes_angles:
            self._fit_latent_flow(pts, generator)
        self.train(was)

    @torch.enable_grad()
    def _fit_latent_flow(self, pts: Tensor, generator: torch.Generator) -> None:
        """Maximum likelihood of the encoded latents given their conditions."""
        d = self.config.latent_dim
        flow = self.latent_flow.train()
        opt = torch.optim.Adam(flow.parameters(), 1e-3)
        for _ in range(self.config.latent_flow_steps):
            idx = torch.randint(0, len(pts), (min(256, len(pts)),), generator=generator,
                                device=generator.device).to(pts.device)
            loss = -flow(pts[idx, d:]).log_prob(pts[idx, :d]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        flow.eval()

    # ---- generation ------------------------------------------------------------------------
    def sample_latent(self, c: Tensor, generator: Source) -> Tensor:
        """Latent vectors for conditions ``c`` from the KDE (N(0, 1) before it is fitted).

        Rejection sampling on the energy label: propose a stored point uniformly, accept
        it with probability exp(-(c - c_i)^2 / 2h^2); the accepted point's latent part plus
        kernel noise is a draw from the KDE's conditional density at ``c``.
        """
        d, n = self.config.latent_dim, int(self.kde_count)
        dev = c.device
        if n == 0:
            return randn(generator, len(c), d, device=dev)
        if self.takes_angles:
            return sample_flow(self.latent_flow, c, randn(generator, len(c), d, device=dev))
        pts, h = self.kde_points[:n], self.kde_bandwidth
        chosen = torch.full((len(c),), -1, dtype=torch.long, device=dev)
        target = c[:, 0]
        for _ in range(500):
            pending = (chosen < 0).nonzero()[:, 0]
            if len(pending) == 0:
                break
            # one proposal per pending shower, from that shower's own stream
            streams = subset(generator, pending)
            prop = randint(streams, n, len(pending), device=dev).view(-1)
            p_acc = torch.exp(-0.5 * ((target[pending] - pts[prop, -1]) / h[-1]) ** 2)
            u = rand(streams, len(pending), device=dev).view(-1)
            chosen[pending] = torch.where(u < p_acc, prop, -1)
        left = (chosen < 0).nonzero()[:, 0]
        if len(left):  # far outside the stored labels (extrapolation): nearest label
            chosen[left] = (target[left, None] - pts[None, :, -1]).abs().argmin(1)
        noise = randn(generator, len(c), d, device=dev)
        return pts[chosen, :d] + noise * h[:d]

    def generate(self, e_inc: Tensor, noise: ShowerNoise,
                 conditions: Conditions | None = None) -> Tensor:
        c = self.condition_features(e_inc, self.angle_tensor(conditions, len(e_inc)))
        return self.showers_from_latent(self.sample_latent(c, noise), c, e_inc)

"""Gaussian diffusion as plain TensorFlow functions: noise schedules, the forward process
q(x_t | x_0), DDPM training targets (epsilon or v) and DDIM sampling.

Nothing here knows about Keras models; a denoiser is any callable `fn(x_t, t) -> prediction`
(`guided_prediction` calls a `keras_cxr.unet` denoiser with classifier-free guidance and
`ema_update` keeps an EMA copy of its weights: plain TensorFlow on the callable and its variables).
Conventions (Ho et al. 2020; Song et al. 2021 "DDIM"; Salimans & Ho 2022 "v-prediction"):

    betas[t], t = 0..T-1;  alpha_bar[t] = prod_{s<=t} (1 - betas[s])
    q(x_t | x_0) = N(sqrt(alpha_bar[t]) x_0, (1 - alpha_bar[t]) I)
    eps-prediction target: eps;   v-prediction target: v = sqrt(ab) eps - sqrt(1 - ab) x_0

Every function accepts float32 or float64 tensors (the schedule is cast to the input dtype), so
exactness tests can run in float64.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "v")


# ----------------------------------------------------------------------------- schedules
def linear_beta_schedule(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """DDPM's linear betas (Ho et al. 2020), scaled so other T keep the same total noise."""
    scale = 1000.0 / timesteps
    return np.linspace(beta_start * scale, beta_end * scale, timesteps, dtype=np.float64)


def cosine_beta_schedule(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Improved-DDPM cosine schedule (Nichol & Dhariwal 2021): alpha_bar(t) = cos^2(((t/T)+s)/(1+s) pi/2)."""
    steps = np.arange(timesteps + 1, dtype=np.float64) / timesteps
    f = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = 1.0 - f[1:] / f[:-1]
    return np.clip(betas, 0.0, max_beta)


def make_betas(schedule: str, timesteps: int) -> np.ndarray:
    if schedule == "linear":
        return linear_beta_schedule(timesteps)
    if schedule == "cosine":
        return cosine_beta_schedule(timesteps)
    raise ValueError(f"unknown noise schedule {schedule!r}; use one of {SCHEDULES}")


def alphas_cumprod(betas) -> np.ndarray:
    return np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))


# ----------------------------------------------------------------------------- helpers
def _gather(values, t, like):
    """values[t] reshaped to broadcast against `like` ([B, ...]); t is an int tensor [B] or scalar."""
    v = tf.gather(tf.cast(values, like.dtype), t)
    if v.shape.rank == 0:
        return v
    return tf.reshape(v, tf.concat([tf.shape(v), tf.ones([tf.rank(like) - 1], tf.int32)], 0))


# ----------------------------------------------------------------------------- forward process
def q_sample(x0, t, noise, alpha_bar):
    """Draw x_t ~ q(x_t | x_0) in closed form: sqrt(ab_t) x_0 + sqrt(1 - ab_t) noise."""
    ab = _gather(alpha_bar, t, x0)
    return tf.sqrt(ab) * x0 + tf.sqrt(1.0 - ab) * noise


def q_step(x_prev, t, noise, betas):
    """One forward step q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)."""
    b = _gather(betas, t, x_prev)
    return tf.sqrt(1.0 - b) * x_prev + tf.sqrt(b) * noise


# ----------------------------------------------------------------------------- targets
def v_target(x0, noise, alpha_bar, t):
    ab = _gather(alpha_bar, t, x0)
    return tf.sqrt(ab) * noise - tf.sqrt(1.0 - ab) * x0


def training_target(x0, noise, alpha_bar, t, prediction: str = "eps"):
    """What the denoiser regresses: eps, or v."""
    if prediction == "eps":
        return noise
    if prediction == "v":
        return v_target(x0, noise, alpha_bar, t)
    raise ValueError(f"unknown prediction {prediction!r}; use one of {PREDICTIONS}")


def split_prediction(x_t, model_out, ab, prediction: str = "eps"):
    """(x0_hat, eps_hat) from the denoiser output at noise level ab (already broadcastable)."""
    if prediction == "eps":
        eps = model_out
        x0 = (x_t - tf.sqrt(1.0 - ab) * eps) / tf.sqrt(ab)
    elif prediction == "v":
        x0 = tf.sqrt(ab) * x_t - tf.sqrt(1.0 - ab) * model_out
        eps = tf.sqrt(1.0 - ab) * x_t + tf.sqrt(ab) * model_out
    else:
        raise ValueError(f"unknown prediction {prediction!r}; use one of {PREDICTIONS}")
    return x0, eps


def diffusion_loss(prediction_out, target):
    """Mean squared error over all latent elements, averaged over the batch (the "simple" DDPM loss)."""
    return tf.reduce_mean(tf.square(tf.cast(target, prediction_out.dtype) - prediction_out))


# ----------------------------------------------------------------------------- DDIM
def ddim_timesteps(num_train_steps: int, steps):
    """`steps` decreasing timesteps from T-1 to 0 (evenly spaced; `steps` may be a tensor)."""
    steps = tf.minimum(tf.cast(steps, tf.int32), num_train_steps)
    ts = tf.linspace(tf.cast(num_train_steps - 1, tf.float64), 0.0, steps)
    return tf.cast(tf.round(ts), tf.int32)


def ddim_step(x_t, x0_hat, eps_hat, ab_t, ab_prev, eta=0.0, noise=None):
    """x_{t_prev} from DDIM (Song et al. 2021, eq. 12). eta=0: deterministic; eta=1: DDPM-like."""
    ab_t = tf.cast(ab_t, x_t.dtype)
    ab_prev = tf.cast(ab_prev, x_t.dtype)
    eta = tf.cast(eta, x_t.dtype)
    sigma = eta * tf.sqrt((1.0 - ab_prev) / (1.0 - ab_t)) * tf.sqrt(tf.maximum(1.0 - ab_t / ab_prev, 0.0))
    direction = tf.sqrt(tf.maximum(1.0 - ab_prev - tf.square(sigma), 0.0)) * eps_hat
    out = tf.sqrt(ab_prev) * x0_hat + direction
    if noise is not None:
        out = out + sigma * noise
    return out


def ddim_sample(denoise_fn, x_T, alpha_bar, steps, prediction: str = "eps", eta=0.0, seed=None, clip_x0=None):
    """Run DDIM from x_T over `steps` timesteps with tf.while_loop (stays one graph when traced).

    denoise_fn(x_t, t_batch) -> prediction ("eps" or "v") with t_batch an int32 [B] tensor.
    eta > 0 needs `seed` (a shape-[2] int tensor for stateless noise). Returns x_0.
    """
    alpha_bar = tf.convert_to_tensor(alpha_bar)
    T = int(alpha_bar.shape[0])
    ts = ddim_timesteps(T, steps)
    n = tf.shape(ts)[0]
    batch = tf.shape(x_T)[0]
    dtype = x_T.dtype
    ab_all = tf.cast(alpha_bar, dtype)

    def body(i, x):
        t = ts[i]
        ab_t = tf.gather(ab_all, t)
        t_prev = tf.where(i + 1 < n, ts[tf.minimum(i + 1, n - 1)], -1)
        ab_prev = tf.where(t_prev >= 0, tf.gather(ab_all, tf.maximum(t_prev, 0)), tf.ones([], dtype))
        out = denoise_fn(x, tf.fill([batch], t))
        x0, eps = split_prediction(x, tf.cast(out, dtype), ab_t, prediction)
        if clip_x0 is not None:
            x0 = tf.clip_by_value(x0, -clip_x0, clip_x0)
        noise = None
        if seed is not None:
            noise = tf.random.stateless_normal(tf.shape(x), seed=tf.cast(seed, tf.int32) + tf.stack([i, 0]), dtype=dtype)
        return i + 1, ddim_step(x, x0, eps, ab_t, ab_prev, eta if noise is not None else 0.0, noise)

    _, x = tf.while_loop(lambda i, x: i < n, body, (tf.constant(0), x_T), shape_invariants=None)
    return x


# ----------------------------------------------------------------------------- DPM-Solver++(2M)
SAMPLERS = ("ddim", "dpm++2m")


def logsnr_timesteps(alpha_bar, steps):
    """About `steps` decreasing timesteps whose lambda = log(alpha/sigma) is evenly spaced from the
    noisiest (t = T-1) to the cleanest (t = 0) step; repeats (two targets nearest one t) dropped."""
    ab = tf.cast(tf.convert_to_tensor(alpha_bar), tf.float64)
    lam = 0.5 * (tf.math.log(ab) - tf.math.log(1.0 - ab))
    steps = tf.maximum(tf.cast(steps, tf.int32), 1)
    targets = tf.linspace(lam[-1], lam[0], steps)
    ts = tf.cast(tf.argmin(tf.abs(lam[None, :] - targets[:, None]), axis=1), tf.int32)
    return tf.unique(ts).y


def dpm_solver_pp_2m_sample(denoise_fn, x_T, alpha_bar, steps, prediction: str = "eps", clip_x0=None):
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Algorithm 2): the multistep second-order
    solver of the diffusion ODE in data (x_0) prediction, over the same `steps` timesteps as DDIM,
    with tf.while_loop (one graph when traced). With alpha_t = sqrt(ab_t), sigma_t = sqrt(1 - ab_t),
    lambda_t = log(alpha_t / sigma_t) and h_i = lambda_{t_i} - lambda_{t_{i-1}}:

        x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (exp(-h_i) - 1) D_i
        D_1 = x0(t_0);  D_i = (1 + 1/(2 r_i)) x0(t_{i-1}) - 1/(2 r_i) x0(t_{i-2}),  r_i = h_{i-1} / h_i

    The last step, to t = -1 (ab = 1, sigma = 0, lambda = inf), is first order: it returns x0(t_last)
    ("lower order final", as the reference implementation does). First order throughout is DDIM.
    Timesteps are uniform in lambda (the paper's "logSNR" spacing, `logsnr_timesteps`), not in t: on
    the cosine schedule uniform-t steps put one huge first step in lambda (-9.9 to -1.7 of a range
    -9.9..5.1 at 10 steps), where the second-order extrapolation of x0 overshoots."""
    alpha_bar = tf.convert_to_tensor(alpha_bar)
    ts = logsnr_timesteps(alpha_bar, steps)
    n = tf.shape(ts)[0]
    batch = tf.shape(x_T)[0]
    dtype = x_T.dtype
    ab_all = tf.cast(alpha_bar, dtype)

    def lam(ab):
        return 0.5 * (tf.math.log(ab) - tf.math.log(1.0 - ab))

    def body(i, x, x0_prev, h_prev):
        t = ts[i]
        ab_t = tf.gather(ab_all, t)
        out = denoise_fn(x, tf.fill([batch], t))
        x0, _ = split_prediction(x, tf.cast(out, dtype), ab_t, prediction)
        if clip_x0 is not None:
            x0 = tf.clip_by_value(x0, -clip_x0, clip_x0)
        last = i + 1 >= n
        t_next = ts[tf.minimum(i + 1, n - 1)]
        ab_next = tf.where(last, tf.ones([], dtype), tf.gather(ab_all, t_next))
        ab_next_safe = tf.where(last, tf.ones([], dtype) * 0.5, ab_next)  # keeps the log finite; unused when last
        h = lam(ab_next_safe) - lam(ab_t)
        r = h_prev / tf.where(h > 0, h, tf.ones([], dtype))
        second = tf.logical_and(i > 0, tf.logical_not(last))
        coef = tf.where(second, 1.0 / (2.0 * tf.where(r > 0, r, tf.ones([], dtype))), tf.zeros([], dtype))
        d = (1.0 + coef) * x0 - coef * x0_prev
        sigma_ratio = tf.sqrt((1.0 - ab_next_safe) / (1.0 - ab_t))
        step = sigma_ratio * x - tf.sqrt(ab_next_safe) * (tf.exp(-h) - 1.0) * d
        x_next = tf.where(last, x0, step)
        return i + 1, x_next, x0, h

    zero = tf.zeros([], dtype)
    _, x, _, _ = tf.while_loop(lambda i, *_: i < n, body, (tf.constant(0), x_T, tf.zeros_like(x_T), zero))
    return x


def sample(denoise_fn, x_T, alpha_bar, steps, prediction: str = "eps", sampler: str = "ddim", clip_x0=None,
           eta=0.0, seed=None):
    """`sampler` = "ddim" (ddim_sample) or "dpm++2m" (dpm_solver_pp_2m_sample, deterministic)."""
    if sampler == "ddim":
        return ddim_sample(denoise_fn, x_T, alpha_bar, steps, prediction, eta=eta, seed=seed, clip_x0=clip_x0)
    if sampler == "dpm++2m":
        return dpm_solver_pp_2m_sample(denoise_fn, x_T, alpha_bar, steps, prediction, clip_x0=clip_x0)
    raise ValueError(f"sampler must be one of {SAMPLERS}. Received: sampler={sampler!r}")


# ----------------------------------------------------------------------------- denoiser helpers
def guided_prediction(net, x_t, t, labels=None, guidance=1.0, num_classes: int = 0, training=False):
    """Output of a `keras_cxr.unet.build_unet` denoiser `net` with classifier-free guidance.

    num_classes 0: `net` takes [x_t, t] and `labels` are ignored. Otherwise it takes
    [x_t, t, labels, label_mask]: labels None -> the null token (mask 0) alone; else one call on the
    doubled batch (mask 1, then mask 0) and uncond + guidance * (cond - uncond), so guidance 0 is the
    unconditional model and 1 the plain conditional one. The output is float32 under any dtype policy
    (sampling loops run in float32).
    """
    x_t = tf.convert_to_tensor(x_t, tf.float32)
    t = tf.cast(t, tf.int32)
    if not num_classes:
        return tf.cast(net([x_t, t], training=training), tf.float32)
    b = tf.shape(x_t)[0]
    zeros_y = tf.zeros((b, num_classes), x_t.dtype)
    zeros_m, ones_m = tf.zeros((b, 1), x_t.dtype), tf.ones((b, 1), x_t.dtype)
    if labels is None:
        return tf.cast(net([x_t, t, zeros_y, zeros_m], training=training), tf.float32)
    labels = tf.cast(labels, x_t.dtype)
    both = tf.cast(net([tf.concat([x_t, x_t], 0), tf.concat([t, t], 0), tf.concat([labels, zeros_y], 0),
                        tf.concat([ones_m, zeros_m], 0)], training=training), tf.float32)
    cond, uncond = both[:b], both[b:]
    return uncond + tf.cast(guidance, x_t.dtype) * (cond - uncond)


def ema_update(online_weights, ema_weights, decay, iterations) -> None:
    """e <- d e + (1 - d) w for each pair, with the usual warm-up d = min(decay, (1 + n) / (10 + n))
    where n = `iterations` (the optimizer's step count after this step)."""
    n = tf.cast(iterations, tf.float32)
    d = tf.minimum(tf.cast(decay, tf.float32), (1.0 + n) / (10.0 + n))
    for w, e in zip(online_weights, ema_weights):
        e.assign(d * e + (1.0 - d) * w)

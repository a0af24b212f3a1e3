"""Policy gradient for KL-regularized RL on the token tree (lecture section 4, "solve using
e.g. PPO").

The policy is a softmax over logits ``theta[h][i, a]``; tokens the reference never picks keep
logit ``-inf`` (the seed: "never pick a token ref. policy wouldn't"), so the KL stays finite.
The objective is the mean over prompts of

    J(pi) = E_pi[r] - beta KL(pi || pi_ref)
          = E_pi[ r(s_H) - beta sum_h log(pi(a_h|s_h) / pi_ref(a_h|s_h)) ],

a return with per-token reward ``-beta log(pi/pi_ref)``. Its regularized values satisfy

    V_H = r,   Q(s, a) = -beta log(pi(a|s)/pi_ref(a|s)) + V_{h+1}(s o a),
    V_h(s) = sum_a pi(a|s) Q(s, a),

and the exact gradient over softmax logits is (the policy-gradient theorem; the
``-beta grad log pi`` term has zero mean under ``pi``)

    dJ/dtheta(s, a) = d_pi(s) pi(a|s) (Q(s, a) - V(s)),

one backward pass for ``Q, V`` and one forward pass for the occupancies ``d_pi``
(``d_0 = 1/n_prompts``: prompts uniform). Methods:

- ``"exact"``: gradient ascent on the exact gradient with a backtracking (Armijo) line
  search; the step grows by 2 after each accepted step (the objective is exact, so the line
  search is legitimate).
- ``"natural"``: the natural gradient of tabular softmax under the occupancy-weighted Fisher
  metric is ``theta += lr * (Q - V)`` (Kakade 2001; Agarwal et al. 2021, JMLR, Lemma 15).
  With ``lr = 1/beta`` (the default) the update is
  ``pi_new(a|s) ∝ pi_ref(a|s) exp(V_{h+1}^{pi}(s o a) / beta)``, soft policy iteration
  (Cen et al. 2022, Oper. Res., eq. 16 with eta = 1/tau): level ``H-1`` is exact after one
  iteration because ``V_H = r``, level ``h`` after ``H - h`` iterations, so the policy is
  optimal after at most ``H`` iterations and iteration ``H + 1`` observes a zero gradient.
  With ``0 < lr < 1/beta`` it converges linearly at rate ``1 - lr beta``.
- ``"reinforce"``: the score-function estimate from ``batch_size`` sampled generations,
  sequence-level return ``G = r - beta sum_h log(pi/pi_ref)`` with the leave-one-out mean
  of the same prompt's returns as baseline (RLOO; Kool et al. 2019), plain SGD.
- ``"ppo"``: PPO-clip (Schulman et al. 2017, eq. 7) on a batch sampled from the current
  policy: ``epochs`` full-batch ascent steps on
  ``mean_i sum_h min(rho A_i, clip(rho, 1 - clip, 1 + clip) A_i)``,
  ``rho = pi_theta(a_h|s_h) / pi_old(a_h|s_h)``, with the KL penalty inside the return as in
  Ziegler et al. (2019) and the sequence-level RLOO advantage ``A_i = G_i - baseline_i``.

Every step records the *exact* objective and KL of the current policy in ``history``
(cheap on trees this size), so sampled methods can be compared with the closed form.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.special import log_softmax

from ..divergences import kl_divergence
from ..policy import Policy
from ..validation import check_beta, check_leaf_array, check_positive_int, make_rng
from .solution import Solution

METHODS = ("natural", "exact", "reinforce", "ppo")
#: Default number of steps per method (a user who passes nothing gets convergence on the
#: demo tree: natural needs at most H + 1, exact a few thousand).
DEFAULT_STEPS = {"natural": 100, "exact": 5000, "reinforce": 2000, "ppo": 500}
#: Armijo sufficient-increase constant of the exact method's backtracking line search.
ARMIJO_C = 1e-4
#: The exact method stops when backtracking shrinks the step below this (no ascent left
#: at float64 precision).
MIN_STEP = 1e-12


@dataclass(frozen=True)
class _Evaluation:
    """Exact regularized values of a softmax policy (see the module docstring)."""

    log_pi: list[np.ndarray]  # log pi(a|s) per level, (level_size(h), A)
    advantage: list[np.ndarray]  # Q(s,a) - V(s), 0 on forbidden tokens
    gradient: list[np.ndarray]  # dJ/dtheta = d(s) pi(a|s) (Q - V)
    objective: float  # mean over prompts of V_0
    objective_per_prompt: np.ndarray


def _evaluate(
    theta: list[np.ndarray],
    log_pi_ref: list[np.ndarray],
    allowed: list[np.ndarray],
    reward: np.ndarray,
    beta: float,
    n_tokens: int,
    *,
    need_gradient: bool = True,
) -> _Evaluation:
    horizon = len(theta)
    log_pi = [log_softmax(logits, axis=1) for logits in theta]
    value = reward  # V_H = r
    advantage: list[np.ndarray] = [np.empty(0)] * horizon
    for h in range(horizon - 1, -1, -1):
        # Q(s,a) = V_{h+1}(s o a) - beta log(pi/pi_ref)(a|s), 0 where the token is forbidden
        q = np.zeros_like(log_pi[h])
        # Only tokens pi picks enter (pi log pi -> 0 as pi -> 0); they are a subset of the
        # tokens pi_ref allows, which the callers guarantee.
        picked = allowed[h] & (log_pi[h] > -np.inf)
        np.subtract(log_pi[h], log_pi_ref[h], out=q, where=picked)
        q = np.where(picked, value.reshape(-1, n_tokens) - beta * q, 0.0)
        value = (np.exp(log_pi[h]) * q).sum(axis=1)  # V_h(s) = sum_a pi Q : (level_size(h),)
        advantage[h] = np.where(picked, q - value[:, None], 0.0)
    per_prompt = value
    gradient: list[np.ndarray] = []
    if need_gradient:
        occupancy = np.full(per_prompt.shape, 1.0 / per_prompt.size)  # d_0: uniform prompts
        for h in range(horizon):
            pi = np.exp(log_pi[h])
            gradient.append(occupancy[:, None] * pi * advantage[h])
            occupancy = (occupancy[:, None] * pi).reshape(-1)  # d_{h+1}
    return _Evaluation(log_pi, advantage, gradient, float(per_prompt.mean()), per_prompt)


def policy_gradient_grad(
    policy: Policy, ref: Policy, reward: np.ndarray, beta: float
) -> list[np.ndarray]:
    """Exact ``dJ/dtheta`` at ``policy`` for softmax logits ``theta = log pi``.

    ``J`` is the mean over prompts of ``E_pi[r] - beta KL(pi || pi_ref)``; the gradient is
    ``d_pi(s) pi(a|s) (Q(s,a) - V(s))`` (module docstring). Returns one
    ``(level_size(h), A)`` array per level, zero on tokens ``pi`` never picks (a logit of
    ``-inf`` has no gradient).

    Raises:
        ValueError: ``policy`` picks a token that ``ref`` never picks (the KL is infinite).
    """
    for name, value in (("policy", policy), ("ref", ref)):
        if not isinstance(value, Policy):
            raise TypeError(f"{name} must be a tinyrlhf.Policy, got {type(value).__name__}")
    if policy.tree != ref.tree:
        raise ValueError("policy and ref must be policies on the same TokenTree")
    reward = check_leaf_array(ref.tree, reward, "reward")
    beta = check_beta(beta)
    allowed = [table > -np.inf for table in ref.log_probs]
    for h, (table, mask) in enumerate(zip(policy.log_probs, allowed, strict=True)):
        if np.any((table > -np.inf) & ~mask):
            raise ValueError(
                f"policy picks a token at level {h} that ref never picks: KL(pi || pi_ref) is "
                "infinite there; use a policy whose zeros include ref's zeros"
            )
    theta = [np.array(table) for table in policy.log_probs]
    return _evaluate(theta, list(ref.log_probs), allowed, reward, beta, ref.tree.n_tokens).gradient


def _norm(arrays: list[np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.sum(a * a)) for a in arrays)))


def _sample_paths(
    log_pi: list[np.ndarray], n_prompts: int, n_tokens: int, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample ``n`` generations; returns prompts ``(n,)``, states ``(H, n)``, tokens ``(H, n)``."""
    horizon = len(log_pi)
    prompt = rng.integers(0, n_prompts, size=n, dtype=np.int64)
    states = np.empty((horizon, n), dtype=np.int64)
    tokens = np.empty((horizon, n), dtype=np.int64)
    state = prompt
    for h in range(horizon):
        probs = np.exp(log_pi[h][state])  # (n, A)
        cdf = np.cumsum(probs, axis=1)
        u = (1.0 - rng.random(n)) * cdf[
            :, -1
        ]  # in (0, total]: zero-probability tokens never drawn
        token = np.minimum((cdf < u[:, None]).sum(axis=1), n_tokens - 1)
        states[h], tokens[h] = state, token
        state = state * n_tokens + token
    return prompt, states, tokens


def _rloo_advantage(returns: np.ndarray, prompt: np.ndarray, n_prompts: int) -> np.ndarray:
    """``G_i`` minus the mean of the other returns of the same prompt (0 baseline if alone)."""
    total = np.bincount(prompt, weights=returns, minlength=n_prompts)
    count = np.bincount(prompt, minlength=n_prompts).astype(np.float64)
    others = count[prompt] - 1.0
    baseline = np.zeros_like(returns)
    np.divide(total[prompt] - returns, others, out=baseline, where=others > 0)
    return returns - baseline


def _score_gradient(
    log_pi: list[np.ndarray],
    states: np.ndarray,
    tokens: np.ndarray,
    coefficient: np.ndarray,
) -> list[np.ndarray]:
    """``sum_i coefficient[h, i] * grad_theta log pi(a_hi | s_hi)`` per level.

    ``grad_theta(s, .) log pi(a|s) = onehot(a) - pi(.|s)`` (softmax); ``coefficient`` is
    ``(H, n)``.
    """
    gradient = []
    for h, table in enumerate(log_pi):
        grad = np.zeros_like(table)
        np.add.at(grad, (states[h], tokens[h]), coefficient[h])
        np.add.at(grad, states[h], -coefficient[h][:, None] * np.exp(table[states[h]]))
        gradient.append(grad)
    return gradient


def policy_gradient(
    ref: Policy,
    reward: np.ndarray,
    beta: float,
    *,
    method: str = "natural",
    steps: int | None = None,
    lr: float | None = None,
    seed: int | np.random.Generator | None = 0,
    batch_size: int = 256,
    epochs: int = 4,
    clip: float = 0.2,
    tol: float = 1e-12,
    init: Policy | None = None,
) -> Solution:
    """Maximize ``E_pi[r] - beta KL(pi || pi_ref)`` over softmax policies by policy gradient.

    Args:
        ref: reference policy ``pi_ref`` (also the starting point unless ``init`` is given).
        reward: ``(n_leaves,)`` finite rewards.
        beta: KL coefficient, finite and > 0.
        method: ``"natural"`` | ``"exact"`` | ``"reinforce"`` | ``"ppo"`` (module docstring).
        steps: iterations (defaults :data:`DEFAULT_STEPS`).
        lr: step size. Defaults: natural ``1/beta`` (soft policy iteration, exact after
            at most ``H`` iterations); exact ``1.0`` as the first trial step of the line
            search; reinforce ``2.0``; ppo ``2.0``.
        seed: for the sampled methods (int, Generator, or None).
        batch_size: generations per step (reinforce, ppo).
        epochs: surrogate ascent steps per batch (ppo).
        clip: PPO's clipping radius epsilon in (0, 1).
        tol: exact and natural stop when the gradient norm (natural: the largest
            ``|Q - V|``) falls below ``tol``.
        init: starting policy (default ``ref``); must not put mass where ``ref`` has none.

    Returns:
        A :class:`Solution` with ``policy``, ``history`` (exact ``objective``, ``kl``,
        ``grad_norm``, ``step_size`` per step; entry 0 is the starting policy) and
        ``converged`` (exact/natural: the stopping rule was met; sampled: None).
    """
    start = time.perf_counter()
    if not isinstance(ref, Policy):
        raise TypeError(f"ref must be a tinyrlhf.Policy, got {type(ref).__name__}")
    tree = ref.tree
    reward = check_leaf_array(tree, reward, "reward")
    beta = check_beta(beta)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    steps = DEFAULT_STEPS[method] if steps is None else check_positive_int(steps, "steps", 0)
    default_lr = {"natural": 1.0 / beta, "exact": 1.0, "reinforce": 2.0, "ppo": 2.0}[method]
    lr = default_lr if lr is None else float(lr)
    if not np.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be finite and > 0, got {lr!r}")
    batch_size = check_positive_int(batch_size, "batch_size", 2)
    epochs = check_positive_int(epochs, "epochs")
    if not 0 < clip < 1:
        raise ValueError(f"clip must be in (0, 1), got {clip!r}")
    rng = make_rng(seed)
    allowed = [table > -np.inf for table in ref.log_probs]
    log_pi_ref = list(ref.log_probs)
    if init is None:
        theta = [np.array(table) for table in ref.log_probs]
    else:
        if not isinstance(init, Policy) or init.tree != tree:
            raise TypeError("init must be a tinyrlhf.Policy on the same tree as ref")
        if np.isinf(kl_divergence(init, ref)).any():
            raise ValueError("init puts probability on generations ref never produces")
        theta = [
            np.where(mask, table, -np.inf)
            for table, mask in zip(init.log_probs, allowed, strict=True)
        ]

    def evaluate(logits: list[np.ndarray], need_gradient: bool = True) -> _Evaluation:
        return _evaluate(
            logits, log_pi_ref, allowed, reward, beta, tree.n_tokens, need_gradient=need_gradient
        )

    def kl_of(log_pi: list[np.ndarray]) -> float:
        return float(kl_divergence(Policy._trusted(tree, log_pi), ref).mean())

    current = evaluate(theta)
    records = {
        "objective": [current.objective],
        "kl": [kl_of(current.log_pi)],
        "grad_norm": [_norm(current.gradient)],
        "step_size": [0.0],
    }
    converged: bool | None = None if method in ("reinforce", "ppo") else False
    step_size = lr
    for _ in range(steps):
        if method == "natural":
            if max(float(np.abs(adv).max()) for adv in current.advantage) < tol:
                converged = True
                break
            # theta += lr (Q - V): the natural gradient of tabular softmax
            theta = [t + lr * adv for t, adv in zip(theta, current.advantage, strict=True)]
            current = evaluate(theta)
        elif method == "exact":
            squared_norm = records["grad_norm"][-1] ** 2
            if np.sqrt(squared_norm) < tol:
                converged = True
                break
            while True:  # backtracking line search (Armijo)
                trial_theta = [
                    t + step_size * g for t, g in zip(theta, current.gradient, strict=True)
                ]
                trial = evaluate(trial_theta)
                if trial.objective >= current.objective + ARMIJO_C * step_size * squared_norm:
                    break
                step_size *= 0.5
                if step_size < MIN_STEP:
                    break
            if step_size < MIN_STEP:
                converged = True  # no ascent direction left at float64 precision
                break
            theta, current = trial_theta, trial
            records["step_size"].append(step_size)
            step_size *= 2.0
        else:
            prompt, states, tokens = _sample_paths(
                current.log_pi, tree.n_prompts, tree.n_tokens, batch_size, rng
            )
            log_pi_old = np.stack(
                [current.log_pi[h][states[h], tokens[h]] for h in range(tree.horizon)]
            )
            log_ref = np.stack([log_pi_ref[h][states[h], tokens[h]] for h in range(tree.horizon)])
            leaf = states[-1] * tree.n_tokens + tokens[-1]
            # G = r(xi) - beta sum_h log(pi/pi_ref)(a_h|s_h): the KL-penalized return
            returns = reward[leaf] - beta * (log_pi_old - log_ref).sum(axis=0)
            adv = _rloo_advantage(returns, prompt, tree.n_prompts)  # (n,)
            if method == "reinforce":
                coefficient = np.broadcast_to(adv / batch_size, states.shape)
                grad = _score_gradient(current.log_pi, states, tokens, coefficient)
                theta = [t + lr * g for t, g in zip(theta, grad, strict=True)]
            else:
                for _epoch in range(epochs):
                    log_pi_now = [log_softmax(t, axis=1) for t in theta]
                    log_new = np.stack(
                        [log_pi_now[h][states[h], tokens[h]] for h in range(tree.horizon)]
                    )
                    ratio = np.exp(log_new - log_pi_old)  # (H, n)
                    # d/dtheta min(rho A, clip(rho) A) = rho A grad log pi, unless clipped
                    clipped = ((adv > 0) & (ratio > 1 + clip)) | ((adv < 0) & (ratio < 1 - clip))
                    coefficient = np.where(clipped, 0.0, ratio * adv / batch_size)
                    grad = _score_gradient(log_pi_now, states, tokens, coefficient)
                    theta = [t + lr * g for t, g in zip(theta, grad, strict=True)]
            current = evaluate(theta)
            records["step_size"].append(lr)
        if method == "natural":
            records["step_size"].append(lr)
        records["objective"].append(current.objective)
        records["kl"].append(kl_of(current.log_pi))
        records["grad_norm"].append(_norm(current.gradient))
    else:
        if (
            method == "natural"
            and max(float(np.abs(adv).max()) for adv in current.advantage) < tol
        ):
            converged = True
        if method == "exact" and records["grad_norm"][-1] < tol:
            converged = True
    return Solution(
        policy=Policy._trusted(tree, current.log_pi),
        method=f"policy_gradient[{method}]",
        reference=ref,
        reward=reward,
        beta=beta,
        history={key: np.asarray(values) for key, values in records.items()},
        converged=converged,
        wall_time=time.perf_counter() - start,
        info={"steps_taken": len(records["objective"]) - 1, "lr": lr},
    )

-- Argo CD health check for kekeeper.io/RecordingKeyConfig.
-- Install as resource.customizations.health.kekeeper.io_RecordingKeyConfig in argocd-cm
-- (docs/gitops.md). Written for Argo CD's Lua 5.1 (gopher-lua); tested with lua5.4.
--
-- Order matters: the first rule that matches decides. Flux's healthCheckExprs in
-- examples/flux/kustomization.yaml make the same decisions (tests/gitops checks both).
--   no status / status of an older generation      -> Progressing (the operator has not looked yet)
--   Ready=False reason Suspended                   -> Suspended
--   Stalled=True                                   -> Degraded (needs a human)
--   KeyPairIntegrity=False                         -> Degraded (custody check failed)
--   HistoricalKeysAtRisk=True                      -> Degraded (old recordings may become undecryptable)
--   Reconciling=True                               -> Progressing (work pending, e.g. "3/100 ...";
--                                                     also while KMS throttles or is briefly down)
--   Ready=True                                     -> Healthy
--   Ready=False reason Rotating                    -> Progressing
--   Ready=False any other reason (KmsUnavailable)  -> Degraded
--   no Ready condition, or Ready=Unknown           -> Progressing
local hs = {}

local function condition(conditions, type)
  for _, c in ipairs(conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function is(c, status)
  return c ~= nil and c.status == status
end

local function describe(c)
  local reason = c.reason or c.type
  if c.message ~= nil and c.message ~= "" then
    return reason .. ": " .. c.message
  end
  return reason
end

local function verdict(status, message)
  hs.status = status
  hs.message = message
  return hs
end

if obj.status == nil or obj.status.conditions == nil or #obj.status.conditions == 0 then
  return verdict("Progressing", "Waiting for the operator to report status")
end

local generation = obj.metadata.generation or 0
local observed = obj.status.observedGeneration or 0
local conditions = obj.status.conditions
local ready = condition(conditions, "Ready")
local readyObserved = ready ~= nil and ready.observedGeneration or generation
if observed < generation or readyObserved < generation then
  return verdict("Progressing", "Waiting for the operator to observe generation " .. generation)
end

if is(ready, "False") and ready.reason == "Suspended" then
  return verdict("Suspended", describe(ready))
end

local stalled = condition(conditions, "Stalled")
if is(stalled, "True") then
  return verdict("Degraded", describe(stalled))
end

local integrity = condition(conditions, "KeyPairIntegrity")
if is(integrity, "False") then
  return verdict("Degraded", describe(integrity))
end

local atRisk = condition(conditions, "HistoricalKeysAtRisk")
if is(atRisk, "True") then
  return verdict("Degraded", describe(atRisk))
end

local reconciling = condition(conditions, "Reconciling")
if is(reconciling, "True") then
  return verdict("Progressing", describe(reconciling))
end

if is(ready, "True") then
  return verdict("Healthy", describe(ready))
end

if is(ready, "False") then
  if ready.reason == "Rotating" then
    return verdict("Progressing", describe(ready))
  end
  return verdict("Degraded", describe(ready))
end

return verdict("Progressing", "Waiting for the Ready condition")

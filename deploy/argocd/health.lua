-- Argo CD health check for meshfed.io/MeshFederation.
--
-- Healthy:     Ready=True and status.observedGeneration == metadata.generation.
-- Progressing: no status yet; status describes an older generation; Ready
--              missing or Unknown; or Ready=False for a reason meshfed clears
--              by itself on a later pass (TRANSIENT below).
-- Degraded:    Ready=False for any other reason (an unreachable member, a
--              missing root or credentials Secret, an object of meshfed's name
--              that meshfed did not create...), with the Ready message.
local TRANSIENT = {
  -- A token could not be minted or a remote secret not written yet; every
  -- pass retries.
  RemoteSecretsNotReady = true,
  -- An intermediate could not be issued or written yet; every pass retries.
  IntermediatesNotReady = true,
}

local hs = {}

local function current(o)
  local generation = o.metadata and o.metadata.generation
  local observed = o.status and o.status.observedGeneration
  return generation == nil or observed == generation
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for meshfed-operator to report status"
  return hs
end

if not current(obj) then
  hs.status = "Progressing"
  hs.message = "Waiting for meshfed-operator to reconcile generation " ..
    tostring(obj.metadata.generation) .. " (status is of generation " ..
    tostring(obj.status.observedGeneration) .. ")"
  return hs
end

local ready = nil
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Ready" then
      ready = c
    end
  end
end

if ready == nil or ready.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end

local message = ready.message or ""
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message
  return hs
end

-- An object of meshfed's name that meshfed did not create waits for a human,
-- whatever the reason it shows up under.
local foreign = string.find(message, "not created by meshfed", 1, true) ~= nil
if TRANSIENT[ready.reason] and not foreign then
  hs.status = "Progressing"
else
  hs.status = "Degraded"
end
if message == "" then
  message = ready.reason or "Ready is False"
end
hs.message = message
return hs

-- Argo CD health check for meshfed.io/MeshFederation.
--
-- Healthy:     Ready=True and status.observedGeneration == metadata.generation.
-- Progressing: no status yet; status describes an older generation; Ready
--              missing or Unknown; or Ready=False for a reason meshfed clears
--              by itself (TRANSIENT below): nobody needs to do anything.
-- Degraded:    Ready=False for any other reason: a person needs to act (an
--              unreachable member, a missing root Secret, a refused install,
--              an object of meshfed's name that meshfed did not create...).
-- The message is the Ready message, which says what is wrong and what to do.
-- Every reason is listed in docs/argocd.md.
local TRANSIENT = {
  -- A root rotation waits for its phase that signs with the new root.
  IntermediatesWaitForRotation = true,
  -- An intermediate could not be issued or written yet; every pass retries.
  IntermediatesNotReady = true,
  -- A token could not be minted or a remote secret not written yet; every
  -- pass retries.
  RemoteSecretsNotReady = true,
  -- meshfed applied istiod (Managed) and it is not available yet.
  ControlPlanesStarting = true,
  -- meshfed applied the east-west gateways and one does not serve yet
  -- (pods starting, load balancer address pending).
  GatewaysStarting = true,
  -- Withdrawn members are healthy again and come back after settlePeriod.
  MembersRestoring = true,
  -- A member's first run has not finished yet.
  MembersNotReconciled = true,
  -- A member that left the spec waits for its cleanup.
  MembersLeaving = true,
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

-- Customers see why deliveries fail as a class (timeout, connection_error, refused, ...), never
-- the raw error text: that text can describe the internal network to someone probing it.
ALTER TABLE apievents.subscription ADD COLUMN last_error_class text;

-- The cap on subscriptions per CustomerKey counts them at every create, and the producer
-- groups windows in flight by CustomerKey.
CREATE INDEX subscription_customer ON apievents.subscription (customer_key);
